package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/weftmesh/weft/agent/api"
	"github.com/weftmesh/weft/agent/meshtls"
	"github.com/weftmesh/weft/bpf"
	"github.com/weftmesh/weft/identity"
	"github.com/weftmesh/weft/kvstore"
	"github.com/weftmesh/weft/policy"
)

// The policy half of the local API: list, get, apply (and wait until every
// node enforces), delete, trace; and the revision this node enforces,
// which other nodes' `apply --wait` ask over the agent-to-agent API.

// policyAskTimeout bounds one long poll of a node's enforced revision;
// a wait longer than that asks again.
const policyAskTimeout = 5 * time.Second

// Policies implements api.PolicyManager.
func (a *Agent) Policies(ctx context.Context) ([]api.PolicyState, error) {
	locals, applied := a.policy.localSnapshot()
	ps, entries, err := a.policy.policyNames(ctx)
	if err != nil {
		return nil, err
	}
	var out []api.PolicyState
	for _, p := range ps {
		st := api.PolicyState{Name: p.Name, Revision: applied[p.Name].Revision, SelectedEndpoints: []string{}, Entries: entries[p.Name]}
		if !strings.HasPrefix(p.File, storedKeyFile) {
			st.File, st.Line = p.File, p.Line
		}
		for _, l := range locals {
			if p.EndpointSelector.Matches(l.Labels) {
				st.SelectedEndpoints = append(st.SelectedEndpoints, l.IP.String())
			}
		}
		out = append(out, st)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// GetPolicy implements api.PolicyManager.
func (a *Agent) GetPolicy(ctx context.Context, name string) (api.Policy, error) {
	p, rev, err := kvstore.Get(ctx, a.cp.kv, kvstore.PolicyKey(name), kvstore.DecodePolicy)
	if errors.Is(err, kvstore.ErrNotFound) {
		return api.Policy{}, api.Errorf(api.CodeNotFound, "no policy %q (see `meshctl policy list`)", name)
	}
	if err != nil {
		return api.Policy{}, api.Errorf(api.CodeUnavailable, "%v", err)
	}
	return api.Policy{Name: p.Name, Revision: rev, Document: p.Document}, nil
}

// ApplyPolicy implements api.PolicyManager: every document of the file is
// validated before any is written, and the changed ones are written in one
// etcd transaction, so a file is applied whole or not at all. With
// req.Wait it then waits until every node enforces what was stored.
// maxApplyWait bounds how long one apply may hold the agent asking every
// node; a caller that wants longer asks again.
const maxApplyWait = 5 * time.Minute

func (a *Agent) ApplyPolicy(ctx context.Context, req api.ApplyPolicyRequest) (api.ApplyPolicyResult, error) {
	if w := time.Duration(req.Wait); w < 0 || w > maxApplyWait {
		return api.ApplyPolicyResult{}, api.Errorf(api.CodeInvalid, "wait %s: give at most %s (meshctl policy apply --timeout)", w, maxApplyWait)
	}
	file := req.Filename
	if file == "" {
		file = "<stdin>"
	}
	ps, err := policy.Parse(file, []byte(req.Document))
	if err != nil {
		return api.ApplyPolicyResult{}, api.Errorf(api.CodeInvalid, "%v", err)
	}
	// policy.Parse refuses a name defined twice, so each document is one
	// policy of its own name; each keeps its text as written.
	actions := make([]string, len(ps))
	var changed []kvstore.Policy
	for i, p := range ps {
		actions[i] = "created"
		old, err := a.cp.kv.GetPolicy(ctx, p.Name)
		switch {
		case err == nil:
			actions[i] = "updated"
			if old.Document == p.Source && old.File == file && old.Line == p.SourceLine {
				actions[i] = "unchanged"
				continue
			}
		case !errors.Is(err, kvstore.ErrNotFound):
			return api.ApplyPolicyResult{}, api.Errorf(api.CodeUnavailable, "reading policy %s before applying %s (none was written): %v", p.Name, file, err)
		}
		changed = append(changed, kvstore.Policy{Name: p.Name, Format: "yaml", Document: p.Source, File: file, Line: p.SourceLine,
			Updated: time.Now().UTC(), UpdatedBy: a.cfg.NodeName})
	}
	var committed int64
	if len(changed) > 0 {
		committed, err = a.cp.kv.PutPoliciesRevision(ctx, changed)
		switch {
		case kvstore.IsPermissionDenied(err):
			return api.ApplyPolicyResult{}, needAdmin("applying policies")
		case errors.Is(err, kvstore.ErrInvalidRecord):
			// The parser checks what the store checks; this is a bug,
			// but the user still needs the truth, not "unavailable".
			return api.ApplyPolicyResult{}, api.Errorf(api.CodeInvalid, "%s: refused by the store (none was written): %v", file, err)
		case err != nil:
			return api.ApplyPolicyResult{}, api.Errorf(api.CodeUnavailable, "storing the policies of %s (none was written): %v", file, err)
		}
	}
	stored := time.Now()
	res := api.ApplyPolicyResult{Revision: committed}
	for i, p := range ps {
		_, rev, _ := kvstore.Get(ctx, a.cp.kv, kvstore.PolicyKey(p.Name), kvstore.DecodePolicy)
		if actions[i] != "unchanged" && committed != 0 {
			rev = committed
		}
		res.Policies = append(res.Policies, api.AppliedPolicy{Name: p.Name, Action: actions[i], Revision: rev})
		res.Revision = max(res.Revision, rev)
	}
	if req.Wait > 0 {
		names := make([]string, len(ps))
		for i, p := range ps {
			names[i] = p.Name
		}
		e := a.waitPolicyEnforced(ctx, res.Revision, names, time.Duration(req.Wait), stored)
		res.Enforcement = &e
	}
	return res, nil
}

// PolicyRevision implements api.PolicyStatus.
func (a *Agent) PolicyRevision(ctx context.Context, atLeast int64, wait time.Duration) (api.PolicyRevision, error) {
	wctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	rev, at, failed := a.policy.waitEnforced(wctx, atLeast)
	if ctx.Err() != nil {
		return api.PolicyRevision{}, ctx.Err()
	}
	return api.PolicyRevision{Node: a.cfg.NodeName, Cluster: a.cfg.Cluster, Revision: rev, EnforcedAt: at, Failed: failed}, nil
}

// policyNode is a node `apply --wait` waits for.
type policyNode struct {
	cluster, name string
	meshIP        netip.Addr
	self          bool
}

// policyNodes lists every node of this etcd: the node records and the
// nodes whose record went while their tunnel is alive (their datapath
// still enforces whatever it last compiled), sorted by cluster/name.
func (a *Agent) policyNodes() []policyNode {
	byKey := map[string]policyNode{}
	add := func(n kvstore.Node) {
		byKey[n.Key()] = policyNode{cluster: n.Cluster, name: n.Name, meshIP: n.MeshIP,
			self: n.Cluster == a.cfg.Cluster && n.Name == a.cfg.NodeName}
	}
	// The nodes of this etcd only: a connected cluster's nodes enforce
	// their own cluster's policies.
	a.nodes.Local().Range(func(_ string, n kvstore.Node) bool { add(n); return true })
	if a.peers != nil {
		a.peers.mu.Lock()
		for _, rn := range a.peers.retained {
			if !a.remotes.isRemote(rn.node.Cluster) {
				add(rn.node)
			}
		}
		a.peers.mu.Unlock()
	}
	self := kvstore.NodeKey(a.cfg.Cluster, a.cfg.NodeName)
	if _, ok := byKey[self]; !ok {
		byKey[self] = policyNode{cluster: a.cfg.Cluster, name: a.cfg.NodeName, self: true}
	}
	out := make([]policyNode, 0, len(byKey))
	for _, n := range byKey {
		out = append(out, n)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].cluster+"/"+out[i].name < out[j].cluster+"/"+out[j].name })
	return out
}

// waitPolicyEnforced asks every node, until timeout, whether its datapath
// enforces revision rev (its enforced revision is rev or later and none
// of names failed to compile there). Took is measured from stored, on
// this node's clock, to the node's answer.
func (a *Agent) waitPolicyEnforced(ctx context.Context, rev int64, names []string, timeout time.Duration, stored time.Time) api.PolicyEnforcement {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	nodes := a.policyNodes()
	out := api.PolicyEnforcement{Revision: rev, Timeout: api.Duration(timeout), Nodes: make([]api.NodeEnforcement, len(nodes))}
	var tr http.RoundTripper
	if o := a.obs.Load(); o != nil && o.tr != nil {
		tr = o.tr
	}
	var wg sync.WaitGroup
	for i, n := range nodes {
		ne := &out.Nodes[i]
		ne.Node, ne.Cluster = n.name, n.cluster
		var ask func(ctx context.Context) (api.PolicyRevision, error)
		switch {
		case n.self:
			ask = func(ctx context.Context) (api.PolicyRevision, error) {
				return a.PolicyRevision(ctx, rev, policyAskTimeout)
			}
		case tr == nil:
			ne.Error = "this agent's agent-to-agent API is not running, so the node cannot be asked"
			continue
		case !n.meshIP.IsValid():
			ne.Error = "its record has no mesh address to ask it at"
			continue
		default:
			ask = func(ctx context.Context) (api.PolicyRevision, error) {
				return askPolicyRevision(ctx, tr, n.meshIP, rev)
			}
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				got, err := ask(ctx)
				if err == nil {
					ne.Revision, ne.Error = got.Revision, ""
					if why := failedOf(got.Failed, names); why != "" && got.Revision >= rev {
						// A policy that does not compile there is skipped
						// for good: waiting longer does not help. (Before
						// rev, the failure may be the version this apply
						// replaces.)
						ne.Error = why
						return
					}
					if got.Revision >= rev {
						ne.Enforced, ne.Took = true, api.Duration(time.Since(stored))
						return
					}
					ne.Error = fmt.Sprintf("it enforces revision %d, not yet %d", got.Revision, rev)
				} else if ctx.Err() == nil {
					ne.Error = err.Error()
				}
				select {
				case <-ctx.Done():
					if ne.Error == "" {
						ne.Error = "no answer from its agent"
					}
					return
				case <-time.After(rotatePoll):
				}
			}
		}()
	}
	wg.Wait()
	out.Complete = true
	for _, ne := range out.Nodes {
		out.Complete = out.Complete && ne.Enforced
	}
	return out
}

// failedOf says which of names a node reported as not compiling, or "".
func failedOf(failed map[string]string, names []string) string {
	var why []string
	for _, n := range names {
		if e, ok := failed[n]; ok {
			why = append(why, fmt.Sprintf("policy %s does not compile there: %s", n, e))
		}
	}
	return strings.Join(why, "; ")
}

// askPolicyRevision long-polls a node's enforced policy revision (GET
// /v1/policy/revision on the agent-to-agent API).
func askPolicyRevision(ctx context.Context, tr http.RoundTripper, meshIP netip.Addr, rev int64) (api.PolicyRevision, error) {
	wait := policyAskTimeout
	if dl, ok := ctx.Deadline(); ok {
		wait = min(wait, time.Until(dl))
	}
	ctx, cancel := context.WithTimeout(ctx, wait+2*time.Second)
	defer cancel()
	q := url.Values{"atLeast": {strconv.FormatInt(rev, 10)}, "wait": {wait.String()}}
	u := "https://" + net.JoinHostPort(meshIP.String(), strconv.Itoa(meshtls.DefaultPort)) + "/v1/policy/revision?" + q.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return api.PolicyRevision{}, err
	}
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return api.PolicyRevision{}, fmt.Errorf("no answer from its agent: %v", unwrapURLError(err))
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return api.PolicyRevision{}, fmt.Errorf("its agent answered %s (an agent older than policy apply --wait?)", resp.Status)
	}
	var got api.PolicyRevision
	if err := json.NewDecoder(resp.Body).Decode(&got); err != nil {
		return api.PolicyRevision{}, fmt.Errorf("decoding its policy revision: %v", err)
	}
	return got, nil
}

// DeletePolicy implements api.PolicyManager.
func (a *Agent) DeletePolicy(ctx context.Context, name string) error {
	err := a.cp.kv.DeletePolicy(ctx, name)
	if kvstore.IsPermissionDenied(err) {
		return needAdmin("deleting policies")
	}
	if errors.Is(err, kvstore.ErrNotFound) {
		return api.Errorf(api.CodeNotFound, "no policy %q (see `meshctl policy list`)", name)
	}
	return err
}

// TracePolicy implements api.PolicyManager.
func (a *Agent) TracePolicy(ctx context.Context, req api.TraceRequest) (api.TraceResult, error) {
	from, err := traceLabels(req.From)
	if err != nil {
		return api.TraceResult{}, api.Errorf(api.CodeInvalid, "--from: %v", err)
	}
	to, err := traceLabels(req.To)
	if err != nil {
		return api.TraceResult{}, api.Errorf(api.CodeInvalid, "--to: %v", err)
	}
	proto, err := protoNumber(req.Protocol)
	if err != nil {
		return api.TraceResult{}, api.Errorf(api.CodeInvalid, "%v", err)
	}
	tr, err := a.policy.trace(ctx, from, to, req.Port, proto)
	if err != nil {
		return api.TraceResult{}, err
	}
	res := traceResult(tr)
	res.Note = controlPortNote(req.Port, proto)
	return res, nil
}

// controlPortNote warns that a traced port is one the datapath lets through
// between nodes' own mesh addresses, whatever policy says: a trace judges
// labels and cannot tell whether both ends will be node addresses.
func controlPortNote(port uint16, proto uint8) string {
	const tcp, udp = 6, 17
	name := ""
	switch {
	case port == bpf.DefaultControlPortAPI && (proto == tcp || proto == 0):
		name = "the agent-to-agent API"
	case port == bpf.DefaultControlPortGossip && (proto == tcp || proto == udp || proto == 0):
		name = "gossip"
	case port == bpf.DefaultControlPortProbe && (proto == udp || proto == 0):
		name = "health probes"
	default:
		return ""
	}
	return fmt.Sprintf("port %d is %s: between two nodes' own mesh addresses it always passes, whatever the verdict above (agent control traffic, authenticated by the tunnel; docs/datapath.md, \"Control traffic between nodes\"); to and from workloads the verdict stands", port, name)
}

// traceLabels reads one side of a trace: an endpoint's labels (any
// source: a trace describes an endpoint, mesh:cluster included, it does not
// give it labels), or one reserved identity's label (reserved:world).
func traceLabels(m map[string]string) (identity.Labels, error) {
	ls, err := identity.ParseLabelMap(m, identity.SourceVM)
	if err != nil {
		return nil, err
	}
	for _, l := range ls {
		if l.Source != identity.SourceReserved {
			continue
		}
		if _, err := identity.LookupReserved(l.Key); err != nil {
			return nil, err
		}
		if len(ls) > 1 {
			return nil, fmt.Errorf("%s is a reserved identity and has no other labels: give it alone", l)
		}
	}
	return ls, nil
}

func traceResult(tr policy.TraceResult) api.TraceResult {
	step := func(d policy.DirectionTrace) api.TraceStep {
		s := api.TraceStep{Verdict: strings.ToLower(d.Verdict.String()), Enforced: d.Enforced, Reason: d.Reason}
		if d.Rule != nil {
			s.Policies = []string{d.Rule.Policy}
			s.Rule = &api.TraceRule{Policy: d.Rule.Policy, Section: d.Rule.Section, Index: d.Rule.Index, File: d.Rule.File, Line: d.Rule.Line}
			if strings.HasPrefix(d.Rule.File, storedKeyFile) {
				// A record from before files were kept: its lines are
				// the stored document's, not a file's.
				s.Rule.File, s.Rule.Line = "", 0
			}
		}
		return s
	}
	return api.TraceResult{Verdict: strings.ToLower(tr.Verdict.String()), Egress: step(tr.Egress), Ingress: step(tr.Ingress)}
}

func protoNumber(s string) (uint8, error) {
	switch strings.ToUpper(s) {
	case "TCP", "":
		return policy.IPProtoTCP, nil
	case "UDP":
		return policy.IPProtoUDP, nil
	case "SCTP":
		return policy.IPProtoSCTP, nil
	case "ICMP":
		return policy.IPProtoICMP, nil
	case "ANY":
		return policy.IPProtoAny, nil
	}
	return 0, fmt.Errorf("protocol %q: use tcp, udp, sctp, icmp or any", s)
}
