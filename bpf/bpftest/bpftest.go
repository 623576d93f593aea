// Package bpftest is an in-memory datapath for unit tests of code that
// programs the eBPF maps: it holds the ipcache, endpoint and policy maps as
// Go maps and records attachments, so an agent's reconcilers run without
// root or a kernel that loads programs (as tailscale's fake router does for
// its router). Only tests import it; the real datapath's own tests run the
// programs in the kernel.
package bpftest

import (
	"fmt"
	"maps"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"

	"github.com/weftmesh/weft/bpf"
)

// Datapath is an in-memory datapath. Use New.
type Datapath struct {
	mu        sync.Mutex
	ipcache   map[netip.Prefix]uint32
	ipflags   map[netip.Prefix]uint32 // the ipcache entries' flags (bpf.IPCacheNode)
	endpoints map[netip.Addr]bpf.Endpoint
	policy    map[uint32]map[bpf.PolicyKey]bpf.Verdict
	attached  map[string]bool
	host      string
	underlay  map[string]bool
	strict    bool
	wgPort    uint16
	nodes     map[netip.Addr]bool // strict mode's other nodes' underlay addresses
	events    chan bpf.Event
	closed    bool
	removed   bool
	// writes logs every map write in order ("ipcache+ 10.0.0.1/32", ...),
	// for tests of write ordering.
	writes []string
}

// New returns an empty datapath.
func New() *Datapath {
	return &Datapath{
		ipcache:   map[netip.Prefix]uint32{},
		ipflags:   map[netip.Prefix]uint32{},
		endpoints: map[netip.Addr]bpf.Endpoint{},
		policy:    map[uint32]map[bpf.PolicyKey]bpf.Verdict{},
		attached:  map[string]bool{},
		underlay:  map[string]bool{},
		nodes:     map[netip.Addr]bool{},
		events:    make(chan bpf.Event, 64),
	}
}

func (d *Datapath) logf(format string, args ...any) {
	d.writes = append(d.writes, fmt.Sprintf(format, args...))
}

// Reopen makes a closed datapath usable again with its state, as a
// restarted agent finds the pinned maps of the previous one.
func (d *Datapath) Reopen() *Datapath {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.closed, d.removed = false, false
	return d
}

// Closed reports whether the datapath was closed (and not reopened).
func (d *Datapath) Closed() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.closed
}

// AttachHostDevice records the host device's attachment.
func (d *Datapath) AttachHostDevice(iface string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.host = iface
	d.attached[iface] = true
	return nil
}

// AttachWorkload records a workload veth's attachment.
func (d *Datapath) AttachWorkload(iface string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.attached[iface] = true
	return nil
}

// BindWorkload records nothing: the fake has no anti-spoofing.
func (d *Datapath) BindWorkload(netip.Addr, string) error { return nil }

// AttachUnderlay records an underlay interface's attachment.
func (d *Datapath) AttachUnderlay(iface string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.underlay[iface] = true
	d.attached[iface] = true
	return nil
}

// Underlay lists the interfaces the underlay program is attached to.
func (d *Datapath) Underlay() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Sorted(maps.Keys(d.underlay))
}

// SetStrict records strict mode and the WireGuard port it lets through.
func (d *Datapath) SetStrict(strict bool, wgPort uint16) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.strict, d.wgPort = strict, wgPort
	return nil
}

// Strict reports strict mode and its WireGuard port.
func (d *Datapath) Strict() (bool, uint16) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.strict, d.wgPort
}

// UnderlayNodes returns strict mode's table, sorted.
func (d *Datapath) UnderlayNodes() ([]netip.Addr, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.SortedFunc(maps.Keys(d.nodes), func(a, b netip.Addr) int { return a.Compare(b) }), nil
}

func (d *Datapath) UpsertUnderlayNode(a netip.Addr) error {
	if !a.IsValid() {
		return fmt.Errorf("bpftest: underlay node address %v is invalid", a)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.nodes[a.Unmap()] = true
	d.logf("underlay+ %s", a)
	return nil
}

func (d *Datapath) DeleteUnderlayNode(a netip.Addr) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.nodes, a.Unmap())
	d.logf("underlay- %s", a)
	return nil
}

// Attached reports whether programs are attached to iface.
func (d *Datapath) Attached(iface string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.attached[iface]
}

func (d *Datapath) UpsertIPCache(p netip.Prefix, id uint32, flags uint32) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.ipcache[p] = id
	d.ipflags[p] = flags
	d.logf("ipcache+ %s", p)
	return nil
}

func (d *Datapath) DeleteIPCache(p netip.Prefix) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.ipcache, p)
	delete(d.ipflags, p)
	d.logf("ipcache- %s", p)
	return nil
}

// IPCacheFlags returns the flags of an ipcache entry (0 when absent).
func (d *Datapath) IPCacheFlags(p netip.Prefix) uint32 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.ipflags[p]
}

// IPCache returns a copy of the ipcache.
func (d *Datapath) IPCache() map[netip.Prefix]uint32 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return maps.Clone(d.ipcache)
}

func (d *Datapath) UpsertEndpoint(a netip.Addr, ep bpf.Endpoint) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.endpoints[a] = ep
	d.logf("endpoint %s", a)
	return nil
}

func (d *Datapath) DeleteEndpoint(a netip.Addr) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.endpoints, a)
	d.logf("endpoint- %s", a)
	return nil
}

// Endpoint returns the endpoint entry of a.
func (d *Datapath) Endpoint(a netip.Addr) (bpf.Endpoint, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	ep, ok := d.endpoints[a]
	return ep, ok
}

func (d *Datapath) SetPolicy(epID uint32, ups map[bpf.PolicyKey]bpf.Verdict, dels []bpf.PolicyKey) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	m := d.policy[epID]
	if m == nil {
		m = map[bpf.PolicyKey]bpf.Verdict{}
		d.policy[epID] = m
	}
	// Sorted, so the write log is deterministic.
	keys := slices.SortedFunc(maps.Keys(ups), func(a, b bpf.PolicyKey) int { return strings.Compare(a.String(), b.String()) })
	for _, k := range keys {
		m[k] = ups[k]
		d.logf("policy+ %s", k)
	}
	for _, k := range dels {
		delete(m, k)
		d.logf("policy- %s", k)
	}
	return nil
}

// Policy returns the policy entries of an endpoint (what the kernel map
// would hold), as the real datapath's Policy does.
func (d *Datapath) Policy(epID uint32) (map[bpf.PolicyKey]bpf.Verdict, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return maps.Clone(d.policy[epID]), nil
}

// Writes returns the map writes so far, in order, and forgets them.
func (d *Datapath) Writes() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	w := d.writes
	d.writes = nil
	return w
}

// Events returns the event source; Emit feeds it.
func (d *Datapath) Events() (*Events, error) {
	return &Events{d: d, done: make(chan struct{})}, nil
}

// Emit sends an event as if the datapath had reported it.
func (d *Datapath) Emit(ev bpf.Event) { d.events <- ev }

// Metrics returns zero counters.
func (d *Datapath) Metrics() (bpf.Metrics, error) { return bpf.Metrics{}, nil }

// MapUsage reports the in-memory maps' fill (capacity 0: unbounded).
func (d *Datapath) MapUsage() ([]bpf.MapUsage, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	n := 0
	for _, m := range d.policy {
		n += len(m)
	}
	return []bpf.MapUsage{{Name: "ipcache", Entries: len(d.ipcache)}, {Name: "endpoints", Entries: len(d.endpoints)}, {Name: "policy", Entries: n}, {Name: "ct"}}, nil
}

// PinDir is empty: nothing is pinned.
func (d *Datapath) PinDir() string { return "" }

// Close releases the datapath; its state stays, as pinned maps do.
func (d *Datapath) Close() error {
	d.mu.Lock()
	d.closed = true
	d.mu.Unlock()
	return nil
}

// Remove drops all state (the node left).
func (d *Datapath) Remove() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.closed, d.removed = true, true
	clear(d.ipcache)
	clear(d.ipflags)
	clear(d.endpoints)
	clear(d.policy)
	clear(d.attached)
	clear(d.underlay)
	clear(d.nodes)
	d.strict = false
	return nil
}

// Removed reports whether Remove was called.
func (d *Datapath) Removed() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.removed
}

// Events is the datapath's event stream.
type Events struct {
	d    *Datapath
	once sync.Once
	done chan struct{}
}

// Read blocks for the next emitted event; after Close it returns an error
// wrapping os.ErrClosed, like the ring buffer reader.
func (e *Events) Read() (bpf.Event, error) {
	select {
	case ev := <-e.d.events:
		return ev, nil
	case <-e.done:
		return bpf.Event{}, fmt.Errorf("bpftest: events: %w", os.ErrClosed)
	}
}

// Close ends Read.
func (e *Events) Close() error {
	e.once.Do(func() { close(e.done) })
	return nil
}
