package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/weftmesh/weft/kvstore"
)

// The underlay: anti-spoofing on the interfaces holding the node's
// underlay addresses, and strict mode (docs/datapath.md, "Anti-spoofing").
// Mesh traffic only ever travels inside WireGuard, so the datapath drops
// underlay packets carrying a mesh address; with `strict: true` it also
// drops plaintext between mesh nodes' underlay addresses other than
// WireGuard, the join service and etcd, which needs those addresses: the
// underlay node reconciler keeps them from the node cache.

// underlayDatapath is the part of the datapath the underlay needs.
type underlayDatapath interface {
	AttachUnderlay(iface string) error
	SetStrict(strict bool, wgPort uint16) error
	underlayNodeWriter
}

// underlayNodeWriter is the strict-mode table of other nodes' underlay
// addresses.
type underlayNodeWriter interface {
	UnderlayNodes() ([]netip.Addr, error)
	UpsertUnderlayNode(addr netip.Addr) error
	DeleteUnderlayNode(addr netip.Addr) error
}

// attachUnderlay sets strict mode as configured (the setting is pinned:
// a restart without `strict` turns it off), fills the strict-mode table,
// starts the host device watch and attaches the anti-spoofing program to
// the underlay interfaces. An underlay address on no interface of the node
// (announced through a 1:1 NAT) falls back to the default routes'
// interfaces; a node with neither runs without the underlay program, and
// says so.
func (a *Agent) attachUnderlay() error {
	if err := a.dp.SetStrict(a.cfg.Strict, uint16(a.tun.ListenPort())); err != nil {
		return err
	}
	if a.cfg.Strict {
		r := newUnderlayNodeReconciler(a.dp, a.nodes, kvstore.NodeKey(a.cfg.Cluster, a.cfg.NodeName), a.log)
		if err := r.reconcile(); err != nil {
			return fmt.Errorf("strict mode: %w", err)
		}
		a.goRun("underlay nodes", r.run)
	}
	w := &hostDeviceWatch{name: a.tun.Name(), ifindex: ifindexOf, attach: a.dp.AttachHostDevice, log: a.log, every: time.Second}
	w.last, _ = ifindexOf(w.name)
	a.goRun("host device watch", w.run)

	ifaces, err := a.underlayIfaces()
	if err != nil {
		ifaces, err = defaultRouteIfaces()
	}
	if err != nil {
		a.log.Warn("no underlay interface found: packets with mesh addresses arriving on the underlay are judged only at the workloads' veths",
			"err", err, "strict", a.cfg.Strict)
		return nil
	}
	for _, idx := range ifaces {
		ifc, err := net.InterfaceByIndex(idx)
		if err != nil {
			return fmt.Errorf("underlay interface %d: %w", idx, err)
		}
		if err := a.dp.AttachUnderlay(ifc.Name); err != nil {
			return fmt.Errorf("attaching the anti-spoofing program to underlay interface %s: %w", ifc.Name, err)
		}
	}
	return nil
}

// underlayIfaces are the interfaces holding the node's underlay addresses.
func (a *Agent) underlayIfaces() ([]int, error) {
	want := map[netip.Addr]bool{}
	for _, ep := range a.self.Endpoints {
		want[ep.Addr().Unmap()] = true
	}
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return nil, err
	}
	var out []int
	seen := map[int]bool{}
	for _, ad := range addrs {
		ip, ok := netip.AddrFromSlice(ad.IP)
		if ok && want[ip.Unmap()] && !seen[ad.LinkIndex] {
			seen[ad.LinkIndex] = true
			out = append(out, ad.LinkIndex)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no interface holds the node's underlay address (%s)", strings.Trim(fmt.Sprint(a.self.Endpoints), "[]"))
	}
	return out, nil
}

// defaultRouteIfaces are the interfaces of the default routes.
func defaultRouteIfaces() ([]int, error) {
	routes, err := netlink.RouteList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return nil, err
	}
	var out []int
	seen := map[int]bool{}
	for _, r := range routes {
		if (r.Dst == nil || isDefault(r.Dst)) && r.LinkIndex > 0 && !seen[r.LinkIndex] {
			seen[r.LinkIndex] = true
			out = append(out, r.LinkIndex)
		}
	}
	if len(out) == 0 {
		return nil, errors.New("no default route either")
	}
	return out, nil
}

func isDefault(n *net.IPNet) bool {
	ones, _ := n.Mask.Size()
	return ones == 0
}

// nodeRevisions is the node cache as the underlay node reconciler reads
// it: its records, and the revision that says when to read them again.
type nodeRevisions interface {
	Range(func(key string, n kvstore.Node) bool)
	Revision() int64
}

// underlayNodeReconciler keeps the strict-mode table equal to the other
// nodes' announced underlay addresses. It reads the node cache whenever
// the cache's revision moves (a short poll: the table needs no event of
// its own and a node's arrival is a handshake away from using it anyway),
// and writes only the difference.
type underlayNodeReconciler struct {
	dp    underlayNodeWriter
	nodes nodeRevisions
	self  string // this node's key: its own addresses are not "other nodes"
	log   *slog.Logger
	every time.Duration
	rev   int64 // the revision last reconciled
}

func newUnderlayNodeReconciler(dp underlayNodeWriter, nodes nodeRevisions, self string, log *slog.Logger) *underlayNodeReconciler {
	return &underlayNodeReconciler{dp: dp, nodes: nodes, self: self, log: log, every: time.Second, rev: -1}
}

// desired lists the other nodes' underlay addresses.
func (r *underlayNodeReconciler) desired() map[netip.Addr]bool {
	want := map[netip.Addr]bool{}
	r.nodes.Range(func(key string, n kvstore.Node) bool {
		if key == r.self {
			return true
		}
		for _, ep := range n.Endpoints {
			if a := ep.Addr().Unmap(); a.IsValid() && !a.IsUnspecified() {
				want[a] = true
			}
		}
		return true
	})
	return want
}

// reconcile writes the difference between the table and the node cache.
func (r *underlayNodeReconciler) reconcile() error {
	rev := r.nodes.Revision()
	want := r.desired()
	have, err := r.dp.UnderlayNodes()
	if err != nil {
		return err
	}
	var errs []error
	for _, a := range have {
		if !want[a] {
			errs = append(errs, r.dp.DeleteUnderlayNode(a))
		}
		delete(want, a)
	}
	for a := range want {
		errs = append(errs, r.dp.UpsertUnderlayNode(a))
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	r.rev = rev
	return nil
}

// run reconciles whenever the node cache moves, until ctx ends; a failed
// pass is tried again at the next tick.
func (r *underlayNodeReconciler) run(ctx context.Context) error {
	t := time.NewTicker(r.every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		if r.nodes.Revision() == r.rev {
			continue
		}
		if err := r.reconcile(); err != nil {
			r.log.Error("strict mode: updating the other nodes' underlay addresses", "err", err)
		}
	}
}

// hostDeviceWatch attaches the host-device programs again when the tunnel
// device is recreated (the tunnel's upkeep recreates a userspace device
// whose helper died). The new device has none of the programs, and a new
// ifindex: the only interface through which a packet to a workload may
// carry another node's mesh address, which the workload programs must
// learn, or they would take the whole mesh for spoofed.
type hostDeviceWatch struct {
	name    string
	ifindex func(name string) (int, error)
	attach  func(name string) error
	log     *slog.Logger
	every   time.Duration
	last    int // the ifindex the programs know
}

func ifindexOf(name string) (int, error) {
	ifc, err := net.InterfaceByName(name)
	if err != nil {
		return 0, err
	}
	return ifc.Index, nil
}

// check re-attaches when the device has another ifindex than last time; a
// device that is gone right now is the tunnel's to recreate.
func (w *hostDeviceWatch) check() {
	idx, err := w.ifindex(w.name)
	if err != nil || idx == w.last {
		return
	}
	if err := w.attach(w.name); err != nil {
		w.log.Error("re-attaching the datapath to the recreated tunnel device", "iface", w.name, "err", err)
		return
	}
	w.log.Info("tunnel device recreated: datapath attached again", "iface", w.name, "ifindex", idx, "was", w.last)
	w.last = idx
}

func (w *hostDeviceWatch) run(ctx context.Context) error {
	t := time.NewTicker(w.every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			w.check()
		}
	}
}
