package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"reflect"
	"sort"
	"sync"
	"time"

	"github.com/weftmesh/weft/bpf"
	"github.com/weftmesh/weft/identity"
	"github.com/weftmesh/weft/identity/allocator"
	"github.com/weftmesh/weft/kvstore"
	"github.com/weftmesh/weft/policy"
)

// cidrIdentityBase is where the node-local identities of CIDR peers start.
// They never leave the node (the ipcache maps a prefix to them and the
// compiler matches CIDR selectors against them), so they sit above every
// cluster's range of the number plan; the datapath's IDENTITY_CIDR_BASE is
// the same number.
const cidrIdentityBase = identity.CIDRIdentityBase

// policyDatapath is the part of the datapath the policy reconciler writes.
type policyDatapath interface {
	SetPolicy(epID uint32, upserts map[bpf.PolicyKey]bpf.Verdict, deletes []bpf.PolicyKey) error
	UpsertEndpoint(addr netip.Addr, ep bpf.Endpoint) error
	// Policy reads an endpoint's entries back (a restarted agent diffs
	// against what it wrote before).
	Policy(epID uint32) (map[bpf.PolicyKey]bpf.Verdict, error)
	ipcacheWriter
}

// localEndpoint is a workload (or the host) this node enforces policy for.
type localEndpoint struct {
	ID       uint32
	IP       netip.Addr
	Identity identity.NumericIdentity
	Labels   identity.Labels
	Host     bool
	policy   policy.EndpointPolicy
}

// policyReconciler owns the compiler. Identity, policy and endpoint changes
// arrive from cache goroutines and are queued; one loop applies them in
// order, so the compiler needs no locking and each change costs only its
// delta in map writes.
type policyReconciler struct {
	dp policyDatapath
	// revision is the policy cache's revision, recorded with each applied
	// policy (`meshctl policy list` shows it).
	revision func() int64
	log      *slog.Logger
	observe  func(name string, start time.Time)

	mu      sync.Mutex
	queue   []func()
	kick    chan struct{}
	applied map[string]policyApplied // policy name -> what is enforced
	// enforced is the revision of the newest policy change the loop has
	// written to the datapath (GET /v1/policy/revision, `policy apply
	// --wait`); enforcedCh is closed and replaced each time it advances.
	enforced   int64
	enforcedAt time.Time
	enforcedCh chan struct{}
	// failed are the policies that did not compile here, with why.
	failed map[string]string

	// Owned by the loop.
	compiler *policy.Compiler
	locals   map[string]*localEndpoint // by IP string
	// portsByID are the named ports of the mesh's endpoints, by identity
	// and endpoint key (endpointPorts; loop-owned).
	portsByID map[uint32]map[string][]kvstore.NamedPort
	// imported are the policies of setImported, by origin and name.
	imported map[string]map[string]*policy.Policy
	// importFailed are the names of imported policies that failed to
	// translate, by origin (guarded by mu, like failed).
	importFailed map[string]map[string]bool
	cidrIDs      map[netip.Prefix]identity.NumericIdentity
	nextCIDR     identity.NumericIdentity
	snapshot     []localEndpoint // copy for readers, under mu
}

type policyApplied struct {
	Revision int64
	Applied  time.Time
}

func newPolicyReconciler(dp policyDatapath, revision func() int64, log *slog.Logger, observe func(string, time.Time)) *policyReconciler {
	return &policyReconciler{
		dp:         dp,
		revision:   revision,
		log:        log,
		observe:    observe,
		kick:       make(chan struct{}, 1),
		applied:    map[string]policyApplied{},
		failed:     map[string]string{},
		enforcedCh: make(chan struct{}),
		compiler:   policy.NewCompiler(identity.ReservedIdentities()),
		locals:     map[string]*localEndpoint{},
		cidrIDs:    map[netip.Prefix]identity.NumericIdentity{},
		nextCIDR:   cidrIdentityBase,
	}
}

func (r *policyReconciler) enqueue(f func()) {
	r.mu.Lock()
	r.queue = append(r.queue, f)
	r.mu.Unlock()
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// do runs f on the loop and waits for it.
func (r *policyReconciler) do(ctx context.Context, f func()) error {
	done := make(chan struct{})
	r.enqueue(func() { f(); close(done) })
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (r *policyReconciler) run(ctx context.Context) error {
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-r.kick:
		}
		start := time.Now()
		for {
			r.mu.Lock()
			q := r.queue
			r.queue = nil
			r.mu.Unlock()
			if len(q) == 0 {
				break
			}
			for _, f := range q {
				f()
			}
		}
		r.publish()
		r.observe("policy", start)
	}
}

func (r *policyReconciler) identityEvent(ev kvstore.Event[allocator.Identity]) {
	r.enqueue(func() {
		var deltas map[string]policy.Delta
		switch ev.Kind {
		case kvstore.EventAdd, kvstore.EventUpdate:
			deltas = r.compiler.AddIdentity(ev.Value.ID, ev.Value.Labels)
		case kvstore.EventDelete:
			deltas = r.compiler.RemoveIdentity(ev.Old.ID)
		}
		r.applyDeltas(deltas)
	})
}

func (r *policyReconciler) policyEvent(ev kvstore.Event[kvstore.Policy]) {
	rev := r.revision()
	r.enqueue(func() {
		var (
			deltas map[string]policy.Delta
			err    error
			name   string
		)
		switch ev.Kind {
		case kvstore.EventAdd, kvstore.EventUpdate:
			name = ev.Value.Name
			var p *policy.Policy
			p, err = policy.ParseSource(storedFile(ev.Value), ev.Value.Line, []byte(ev.Value.Document))
			if err == nil && p.Name != ev.Value.Name {
				err = fmt.Errorf("document is named %q but stored as %q", p.Name, ev.Value.Name)
			}
			if err == nil {
				deltas, err = r.compiler.UpsertPolicy(p)
			}
		case kvstore.EventDelete:
			name = ev.Old.Name
			deltas, err = r.compiler.DeletePolicy(ev.Old.Name)
		}
		if err != nil {
			// The writer validated it; a record that still does not parse
			// was written around meshctl (or by a newer Weft). Skip it,
			// keep enforcing the rest, and say so to `apply --wait`.
			r.log.Error("skipping policy that does not compile", "policy", name, "err", err)
			r.mu.Lock()
			if ev.Kind == kvstore.EventDelete {
				delete(r.failed, name) // gone: nothing left to fail
			} else {
				r.failed[name] = err.Error()
			}
			r.mu.Unlock()
			return
		}
		dpErr := r.applyDeltas(deltas)
		r.syncCIDRIdentities()
		r.mu.Lock()
		if dpErr != nil {
			r.failed[name] = "datapath: " + dpErr.Error()
		} else {
			delete(r.failed, name)
		}
		if ev.Kind == kvstore.EventDelete {
			delete(r.applied, name)
		} else {
			r.applied[name] = policyApplied{Revision: rev, Applied: time.Now()}
		}
		r.mu.Unlock()
	})
}

// policiesDelivered is the policy cache's OnRevision: every policy change
// up to rev has been queued, so once the queue reaches this point they are
// all in the datapath. A file of several policies is one revision; marking
// it after its first policy would end `apply --wait` early.
func (r *policyReconciler) policiesDelivered(rev int64) {
	r.enqueue(func() { r.markEnforced(rev) })
}

// storedFile is the file a stored policy names its rules by: the file it
// was applied from, or its key for records that do not say.
func storedFile(p kvstore.Policy) string {
	if p.File != "" {
		return p.File
	}
	return storedKeyFile + p.Name
}

// storedKeyFile prefixes the name a record that does not say where it was
// applied from goes by: its etcd key, in a form no file given to -f has, so
// a real file under a policies/ directory is still shown as applied from.
const storedKeyFile = "etcd:policies/"

// markEnforced records that the datapath holds every policy change up to
// rev, and wakes the waiters.
func (r *policyReconciler) markEnforced(rev int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if rev <= r.enforced {
		return
	}
	r.enforced, r.enforcedAt = rev, time.Now()
	close(r.enforcedCh)
	r.enforcedCh = make(chan struct{})
}

// enforcedState is the enforced revision, when it was reached, the
// policies that failed, and a channel closed when the revision advances.
func (r *policyReconciler) enforcedState() (int64, time.Time, map[string]string, <-chan struct{}) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var failed map[string]string
	if len(r.failed) > 0 {
		failed = make(map[string]string, len(r.failed))
		for k, v := range r.failed {
			failed[k] = v
		}
	}
	return r.enforced, r.enforcedAt, failed, r.enforcedCh
}

// waitEnforced returns once the enforced revision is at least rev, or ctx
// ends (then it returns the state as it is).
func (r *policyReconciler) waitEnforced(ctx context.Context, rev int64) (int64, time.Time, map[string]string) {
	for {
		got, at, failed, ch := r.enforcedState()
		if got >= rev {
			return got, at, failed
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return got, at, failed
		}
	}
}

// syncCIDRIdentities gives every CIDR the policies name a node-local
// identity, in the compiler and in the ipcache, and drops unused ones.
func (r *policyReconciler) syncCIDRIdentities() {
	want := map[netip.Prefix]bool{}
	for _, p := range policy.ReferencedCIDRs(r.compiler.Policies()) {
		want[p] = true
	}
	for p := range want {
		if _, ok := r.cidrIDs[p]; ok {
			continue
		}
		l, err := identity.ParseLabel("cidr:"+p.String(), "")
		if err != nil {
			r.log.Error("cidr identity", "prefix", p, "err", err)
			continue
		}
		labels, _ := identity.NewLabels(l)
		id := r.nextCIDR
		r.nextCIDR++
		r.cidrIDs[p] = id
		r.applyDeltas(r.compiler.AddIdentity(id, labels))
		if err := r.dp.UpsertIPCache(p, uint32(id), 0); err != nil {
			r.log.Error("ipcache upsert for cidr identity", "prefix", p, "err", err)
		}
	}
	for p, id := range r.cidrIDs {
		if want[p] {
			continue
		}
		delete(r.cidrIDs, p)
		r.applyDeltas(r.compiler.RemoveIdentity(id))
		if err := r.dp.DeleteIPCache(p); err != nil {
			r.log.Error("ipcache delete for cidr identity", "prefix", p, "err", err)
		}
	}
}

// addLocal registers a local endpoint and writes its full policy.
func (r *policyReconciler) addLocal(ctx context.Context, ep localEndpoint) error {
	var err error
	derr := r.do(ctx, func() {
		key := ep.IP.String()
		full := r.compiler.AddEndpoint(key, ep.Labels)
		old, existed := r.locals[key]
		var cur policy.EndpointPolicy
		if existed && old.ID == ep.ID {
			cur = old.policy
		} else if current, rerr := r.currentEntries(ep.ID); rerr == nil {
			// A restarted agent finds the entries it wrote before in the
			// pinned map: diff against them so nothing is rewritten.
			cur = current
		}
		e := ep
		e.policy = policy.EndpointPolicy{Entries: map[policy.Key]policy.Verdict{}}
		for k, v := range cur.Entries {
			e.policy.Entries[k] = v
		}
		d := diffPolicy(cur, full)
		r.locals[key] = &e
		err = r.applyDelta(&e, d, true)
	})
	if derr != nil {
		return derr
	}
	return err
}

func (r *policyReconciler) removeLocal(ctx context.Context, ip netip.Addr) error {
	return r.do(ctx, func() {
		key := ip.String()
		ep, ok := r.locals[key]
		if !ok {
			return
		}
		r.compiler.RemoveEndpoint(key)
		var del []bpf.PolicyKey
		for k := range ep.policy.Entries {
			del = append(del, toBPFKey(k))
		}
		if err := r.dp.SetPolicy(ep.ID, nil, del); err != nil {
			r.log.Error("clearing policy of removed endpoint", "ip", ip, "err", err)
		}
		delete(r.locals, key)
	})
}

// currentEntries reads what the datapath holds for an endpoint.
func (r *policyReconciler) currentEntries(epID uint32) (policy.EndpointPolicy, error) {
	m, err := r.dp.Policy(epID)
	if err != nil {
		return policy.EndpointPolicy{}, err
	}
	out := policy.EndpointPolicy{Entries: map[policy.Key]policy.Verdict{}}
	for k, v := range m {
		out.Entries[policy.Key{Direction: policy.Direction(k.Direction), Identity: identity.NumericIdentity(k.Identity),
			Protocol: k.Protocol, Port: k.Port, PortPrefixLen: k.PortPrefixLen}] = policy.Verdict(v)
	}
	return out, nil
}

func diffPolicy(cur, want policy.EndpointPolicy) policy.Delta {
	d := policy.Delta{IngressEnforced: want.IngressEnforced, EgressEnforced: want.EgressEnforced, Upsert: map[policy.Key]policy.Verdict{}}
	for k, v := range want.Entries {
		if cv, ok := cur.Entries[k]; !ok || cv != v {
			d.Upsert[k] = v
		}
	}
	for k := range cur.Entries {
		if _, ok := want.Entries[k]; !ok {
			d.Delete = append(d.Delete, k)
		}
	}
	return d
}

// applyDeltas writes deltas to the datapath; it logs and returns what
// failed (a full map, say), so `apply --wait` does not call it enforced.
func (r *policyReconciler) applyDeltas(deltas map[string]policy.Delta) error {
	var errs []error
	for key, d := range deltas {
		ep, ok := r.locals[key]
		if !ok {
			continue
		}
		if err := r.applyDelta(ep, d, false); err != nil {
			r.log.Error("applying policy delta", "endpoint", key, "err", err)
			errs = append(errs, fmt.Errorf("endpoint %s: %w", key, err))
		}
	}
	return errors.Join(errs...)
}

// applyDelta writes a delta in the order that never opens a gap: new
// entries first, then the enforcement flags, then the removals.
func (r *policyReconciler) applyDelta(ep *localEndpoint, d policy.Delta, forceFlags bool) error {
	ups := make(map[bpf.PolicyKey]bpf.Verdict, len(d.Upsert))
	for k, v := range d.Upsert {
		ups[toBPFKey(k)] = bpf.Verdict(v)
	}
	if len(ups) > 0 {
		if err := r.dp.SetPolicy(ep.ID, ups, nil); err != nil {
			return err
		}
	}
	flagsChanged := forceFlags || d.IngressEnforced != ep.policy.IngressEnforced || d.EgressEnforced != ep.policy.EgressEnforced
	ep.policy.IngressEnforced, ep.policy.EgressEnforced = d.IngressEnforced, d.EgressEnforced
	for k, v := range d.Upsert {
		ep.policy.Entries[k] = v
	}
	if flagsChanged {
		if err := r.dp.UpsertEndpoint(ep.IP, bpf.Endpoint{
			ID: ep.ID, Identity: uint32(ep.Identity), Host: ep.Host,
			IngressEnforced: d.IngressEnforced, EgressEnforced: d.EgressEnforced,
		}); err != nil {
			return err
		}
	}
	if len(d.Delete) > 0 {
		del := make([]bpf.PolicyKey, 0, len(d.Delete))
		for _, k := range d.Delete {
			del = append(del, toBPFKey(k))
			delete(ep.policy.Entries, k)
		}
		if err := r.dp.SetPolicy(ep.ID, nil, del); err != nil {
			return err
		}
	}
	return nil
}

func toBPFKey(k policy.Key) bpf.PolicyKey {
	return bpf.PolicyKey{Direction: bpf.Direction(k.Direction), Identity: uint32(k.Identity), Protocol: k.Protocol, Port: k.Port, PortPrefixLen: k.PortPrefixLen}
}

// publish copies the loop's view for API readers.
func (r *policyReconciler) publish() {
	snap := make([]localEndpoint, 0, len(r.locals))
	for _, ep := range r.locals {
		c := *ep
		c.policy = policy.EndpointPolicy{IngressEnforced: ep.policy.IngressEnforced, EgressEnforced: ep.policy.EgressEnforced, Entries: map[policy.Key]policy.Verdict{}}
		for k, v := range ep.policy.Entries {
			c.policy.Entries[k] = v
		}
		snap = append(snap, c)
	}
	sort.Slice(snap, func(i, j int) bool { return snap[i].IP.Less(snap[j].IP) })
	r.mu.Lock()
	r.snapshot = snap
	r.mu.Unlock()
}

// localSnapshot returns the local endpoints as last enforced.
func (r *policyReconciler) localSnapshot() ([]localEndpoint, map[string]policyApplied) {
	r.mu.Lock()
	defer r.mu.Unlock()
	applied := make(map[string]policyApplied, len(r.applied))
	for k, v := range r.applied {
		applied[k] = v
	}
	return r.snapshot, applied
}

// trace answers `meshctl policy trace` from the compiler's policies.
func (r *policyReconciler) trace(ctx context.Context, from, to identity.Labels, port uint16, proto uint8) (policy.TraceResult, error) {
	var res policy.TraceResult
	err := r.do(ctx, func() { res = r.compiler.Trace(from, to, port, proto) })
	return res, err
}

// policyNames lists the compiled policies and the datapath entries each
// produces on this node's endpoints, for the API.
func (r *policyReconciler) policyNames(ctx context.Context) ([]*policy.Policy, map[string]int, error) {
	var (
		ps      []*policy.Policy
		entries map[string]int
	)
	err := r.do(ctx, func() { ps, entries = r.compiler.Policies(), r.compiler.PolicyEntries() })
	return ps, entries, err
}

// setLocalPorts sets a local endpoint's named ports.
func (r *policyReconciler) setLocalPorts(ctx context.Context, ip netip.Addr, ports []policy.NamedPort) error {
	var err error
	if derr := r.do(ctx, func() {
		var d map[string]policy.Delta
		if d, err = r.compiler.SetEndpointNamedPorts(ip.String(), ports); err == nil {
			err = r.applyDeltas(d)
		}
	}); derr != nil {
		return derr
	}
	return err
}

// endpointPorts follows the named ports of every endpoint of the mesh:
// an identity's named ports are the union of its endpoints' (egress rules
// resolve names against the destination's).
func (r *policyReconciler) endpointPorts(ev kvstore.Event[kvstore.Endpoint]) {
	if len(ev.Old.NamedPorts) == 0 && len(ev.Value.NamedPorts) == 0 {
		return
	}
	r.enqueue(func() {
		if r.portsByID == nil {
			r.portsByID = map[uint32]map[string][]kvstore.NamedPort{}
		}
		touched := map[uint32]bool{}
		if ev.Kind != kvstore.EventAdd && ev.Old.Identity != 0 {
			delete(r.portsByID[ev.Old.Identity], ev.Old.Key())
			touched[ev.Old.Identity] = true
		}
		if ev.Kind != kvstore.EventDelete && len(ev.Value.NamedPorts) > 0 {
			m := r.portsByID[ev.Value.Identity]
			if m == nil {
				m = map[string][]kvstore.NamedPort{}
				r.portsByID[ev.Value.Identity] = m
			}
			m[ev.Value.Key()] = ev.Value.NamedPorts
			touched[ev.Value.Identity] = true
		}
		for id := range touched {
			var union []policy.NamedPort
			for _, ps := range r.portsByID[id] {
				for _, p := range ps {
					union = append(union, policy.NamedPort{Name: p.Name, Protocol: policy.Protocol(p.Protocol), Port: p.Port})
				}
			}
			if len(r.portsByID[id]) == 0 {
				delete(r.portsByID, id)
			}
			d, err := r.compiler.SetIdentityNamedPorts(identity.NumericIdentity(id), union)
			if err != nil {
				r.log.Warn("named ports of identity left out", "identity", id, "err", err)
				continue
			}
			if err := r.applyDeltas(d); err != nil {
				r.log.Error("applying named-port change", "identity", id, "err", err)
			}
		}
	})
}

// hasLocal reports whether ip is a local endpoint with its policy written.
func (r *policyReconciler) hasLocal(ctx context.Context, ip netip.Addr) bool {
	var ok bool
	if err := r.do(ctx, func() { _, ok = r.locals[ip.String()] }); err != nil {
		return false
	}
	return ok
}

// setImported replaces the policies of one origin that are not stored in
// etcd (a Kubernetes node's NetworkPolicies and WeftPolicies): new and
// changed ones are upserted, vanished ones deleted, unchanged ones left
// alone, so a change costs only its delta. Names are the importer's
// (policy.ImportedName), which no stored policy can have.
func (r *policyReconciler) setImported(origin string, ps []*policy.Policy, failed map[string]string) {
	r.enqueue(func() {
		if r.imported == nil {
			r.imported = map[string]map[string]*policy.Policy{}
		}
		old := r.imported[origin]
		now := map[string]*policy.Policy{}
		for _, p := range ps {
			now[p.Name] = p
		}
		r.mu.Lock()
		if r.importFailed == nil {
			r.importFailed = map[string]map[string]bool{}
		}
		for name := range r.importFailed[origin] {
			if _, still := failed[name]; !still {
				delete(r.failed, name) // fixed or deleted since
			}
		}
		r.importFailed[origin] = map[string]bool{}
		for name, msg := range failed {
			r.failed[name] = msg
			r.importFailed[origin][name] = true
		}
		r.mu.Unlock()
		for name := range old {
			if _, ok := now[name]; ok {
				continue
			}
			d, err := r.compiler.DeletePolicy(name)
			if err == nil {
				err = r.applyDeltas(d)
			}
			if err != nil {
				r.log.Error("removing imported policy", "policy", name, "err", err)
			}
			r.mu.Lock()
			delete(r.applied, name)
			delete(r.failed, name)
			r.mu.Unlock()
		}
		for name, p := range now {
			if o, ok := old[name]; ok && reflect.DeepEqual(o, p) {
				continue
			}
			d, err := r.compiler.UpsertPolicy(p)
			if err == nil {
				err = r.applyDeltas(d)
			}
			r.mu.Lock()
			if err != nil {
				r.failed[name] = err.Error()
				r.log.Error("imported policy not enforced", "policy", name, "err", err)
			} else {
				if _, stand := failed[name]; !stand {
					delete(r.failed, name) // a fail-closed stand-in stays failed
				}
				r.applied[name] = policyApplied{Applied: time.Now()}
			}
			r.mu.Unlock()
		}
		r.syncCIDRIdentities()
		r.imported[origin] = now
	})
}
