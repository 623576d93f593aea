package agent

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"sync"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/weftmesh/weft/agent/api"
	"github.com/weftmesh/weft/agent/config"
	"github.com/weftmesh/weft/identity"
	"github.com/weftmesh/weft/identity/allocator"
	"github.com/weftmesh/weft/kvstore"
)

const (
	workloadStateFile = "workloads.json"
	// workloadIface is the workload's end of its veth, inside its namespace.
	workloadIface = "mesh0"
	// gatewayIP is the next hop every workload routes through: a
	// link-local address answered by a static neighbour entry with the host
	// veth's MAC, so no proxy ARP and no address on the host side is needed.
	gatewayIP = "169.254.1.1"
)

// workload is a local endpoint in a network namespace, as the agent keeps
// it across restarts.
type workload struct {
	Name      string                   `json:"name"`
	Netns     string                   `json:"netns"`
	IP        netip.Addr               `json:"ip"`
	ID        uint32                   `json:"id"`
	HostIface string                   `json:"hostIface"`
	Labels    []string                 `json:"labels"`
	Identity  identity.NumericIdentity `json:"identity"`
}

// workloadManager makes network namespaces mesh endpoints: a veth pair, an
// address from the node's CIDR, routes, the datapath programs, an identity
// and a leased endpoint record.
type workloadManager struct {
	a  *Agent
	mu sync.Mutex
	wl map[string]*workload // by name
	// adding holds the names and addresses of workloads being set up, so
	// two concurrent adds never take one address or plumb one namespace.
	adding map[string]netip.Addr
}

func newWorkloadManager(a *Agent) *workloadManager {
	return &workloadManager{a: a, wl: map[string]*workload{}, adding: map[string]netip.Addr{}}
}

func (m *workloadManager) statePath() string {
	return filepath.Join(m.a.cfg.StateDir, workloadStateFile)
}

// restore brings back the workloads of the previous run (their veths and
// pinned datapath state survived it) and adds the declared ones.
func (m *workloadManager) restore(ctx context.Context, declared []config.Workload) error {
	var saved []workload
	if data, err := os.ReadFile(m.statePath()); err == nil {
		if err := json.Unmarshal(data, &saved); err != nil {
			m.a.log.Error("workload state file is corrupt; starting without it", "file", m.statePath(), "err", err)
			saved = nil
		}
	}
	for _, w := range saved {
		if _, err := os.Stat(netnsPath(w.Netns)); err != nil {
			m.a.log.Warn("workload namespace is gone; dropping the workload", "workload", w.Name, "netns", w.Netns)
			continue
		}
		if !m.a.cidr.Contains(w.IP) {
			m.a.log.Warn("workload address is outside this node's CIDR; re-adding it", "workload", w.Name, "ip", w.IP)
			continue
		}
		w := w
		if err := m.setup(ctx, &w); err != nil {
			m.a.log.Error("restoring workload", "workload", w.Name, "err", err)
		}
	}
	for _, d := range declared {
		if _, err := m.add(ctx, api.EndpointSpec{Netns: d.Netns, Labels: d.Labels}); err != nil && !errors.Is(err, api.ErrConflict) {
			return fmt.Errorf("declared workload %s: %w", d.Netns, err)
		}
	}
	return m.save()
}

// add makes a namespace a workload. Adding it again with the same labels
// returns it unchanged.
func (m *workloadManager) add(ctx context.Context, spec api.EndpointSpec) (*workload, error) {
	if spec.Netns == "" {
		return nil, fmt.Errorf("%w: netns is required (the name of a namespace in `ip netns list`)", api.ErrInvalid)
	}
	if err := config.ValidateName("workload", spec.Netns); err != nil {
		return nil, fmt.Errorf("%w: %v", api.ErrInvalid, err)
	}
	if _, err := os.Stat(netnsPath(spec.Netns)); err != nil {
		return nil, fmt.Errorf("%w: network namespace %q not found (create it with `ip netns add %s`)", api.ErrInvalid, spec.Netns, spec.Netns)
	}
	labels, err := m.a.workloadLabels(spec.Labels)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", api.ErrInvalid, err)
	}
	m.mu.Lock()
	if w, ok := m.wl[spec.Netns]; ok {
		m.mu.Unlock()
		if identity.Labels(mustLabels(w.Labels)).Equal(labels) {
			return w, nil
		}
		return nil, fmt.Errorf("%w: workload %s exists with labels %v; remove it first to change them", api.ErrConflict, w.Name, w.Labels)
	}
	if _, busy := m.adding[spec.Netns]; busy {
		m.mu.Unlock()
		return nil, fmt.Errorf("%w: workload %s is being added by another request; retry in a moment", api.ErrConflict, spec.Netns)
	}
	ip, err := m.freeIP()
	if err == nil {
		m.adding[spec.Netns] = ip
	}
	m.mu.Unlock()
	if err != nil {
		return nil, err
	}
	defer func() {
		m.mu.Lock()
		delete(m.adding, spec.Netns)
		m.mu.Unlock()
	}()
	w := &workload{
		Name: spec.Netns, Netns: spec.Netns, IP: ip, ID: endpointID(m.a.cidr, ip),
		HostIface: hostIfaceName(spec.Netns), Labels: labels.Strings(),
	}
	if err := m.setup(ctx, w); err != nil {
		_ = m.teardown(w)
		return nil, err
	}
	return w, m.save()
}

// setup does (or re-does, idempotently) everything a workload needs.
func (m *workloadManager) setup(ctx context.Context, w *workload) error {
	a := m.a
	labels := mustLabels(w.Labels)
	id, err := a.alloc.Allocate(ctx, labels)
	if err != nil {
		return fmt.Errorf("allocating identity for %s: %w", labels, err)
	}
	w.Identity = id
	if err := plumbVeth(w, a.tun.MTU()); err != nil {
		_ = a.alloc.Release(ctx, id)
		return fmt.Errorf("connecting namespace %s: %w", w.Netns, err)
	}
	if err := a.dp.AttachWorkload(w.HostIface); err != nil {
		_ = a.alloc.Release(ctx, id)
		return fmt.Errorf("attaching datapath to %s: %w", w.HostIface, err)
	}
	if err := a.policy.addLocal(ctx, localEndpoint{ID: w.ID, IP: w.IP, Identity: id, Labels: labels}); err != nil {
		return err
	}
	rec := kvstore.Endpoint{IP: w.IP, Identity: uint32(id), Labels: w.Labels, Name: w.Name, Cluster: a.cfg.Cluster, Node: a.cfg.NodeName}
	if err := a.session.Put(ctx, rec.Key(), &rec); err != nil {
		return fmt.Errorf("registering endpoint %s: %w", w.Name, err)
	}
	m.mu.Lock()
	m.wl[w.Name] = w
	m.mu.Unlock()
	a.log.Info("workload ready", "workload", w.Name, "ip", w.IP, "identity", id, "labels", labels.String())
	return nil
}

func (m *workloadManager) remove(ctx context.Context, name string) error {
	m.mu.Lock()
	w, ok := m.wl[name]
	if ok {
		delete(m.wl, name)
	}
	m.mu.Unlock()
	if !ok {
		return fmt.Errorf("%w: no local workload named %q (see `meshctl endpoints`)", api.ErrNotFound, name)
	}
	a := m.a
	var errs []error
	rec := kvstore.Endpoint{IP: w.IP, Cluster: a.cfg.Cluster, Node: a.cfg.NodeName}
	errs = append(errs, a.session.Delete(ctx, rec.Key()))
	errs = append(errs, a.policy.removeLocal(ctx, w.IP))
	if err := a.dp.DeleteEndpoint(w.IP); err != nil {
		errs = append(errs, err)
	}
	errs = append(errs, m.teardown(w))
	if w.Identity != 0 {
		errs = append(errs, a.alloc.Release(ctx, w.Identity))
	}
	errs = append(errs, m.save())
	return errors.Join(errs...)
}

func (m *workloadManager) removeAll(ctx context.Context) error {
	var errs []error
	for _, w := range m.list() {
		errs = append(errs, m.remove(ctx, w.Name))
	}
	return errors.Join(errs...)
}

// reallocate re-registers workloads whose identity was collected while the
// node's lease was lost.
func (m *workloadManager) reallocate(ctx context.Context, lost allocator.Identity) {
	for _, w := range m.list() {
		if w.Identity == lost.ID {
			if err := m.setup(ctx, w); err != nil {
				m.a.log.Error("re-allocating identity", "workload", w.Name, "err", err)
			}
		}
	}
	if m.a.hostIdent == lost.ID {
		if err := m.a.registerHost(ctx); err != nil {
			m.a.log.Error("re-allocating host identity", "err", err)
		}
	}
}

func (m *workloadManager) teardown(w *workload) error {
	l, err := netlink.LinkByName(w.HostIface)
	if err != nil {
		return nil // already gone: deleting the namespace removes the veth
	}
	if err := netlink.LinkDel(l); err != nil {
		return fmt.Errorf("removing %s: %w", w.HostIface, err)
	}
	return nil
}

func (m *workloadManager) list() []*workload {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]*workload, 0, len(m.wl))
	for _, w := range m.wl {
		out = append(out, w)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

func (m *workloadManager) save() error {
	ws := m.list()
	out := make([]workload, 0, len(ws))
	for _, w := range ws {
		out = append(out, *w)
	}
	data, err := json.MarshalIndent(out, "", "  ")
	if err != nil {
		return err
	}
	tmp := m.statePath() + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return fmt.Errorf("saving workload state: %w", err)
	}
	return os.Rename(tmp, m.statePath())
}

// freeIP returns the lowest address of the node's CIDR no workload uses;
// the network address and the node's mesh IP are never handed out. Caller
// holds m.mu.
func (m *workloadManager) freeIP() (netip.Addr, error) {
	used := map[netip.Addr]bool{m.a.meshIP: true}
	for _, w := range m.wl {
		used[w.IP] = true
	}
	for _, ip := range m.adding {
		used[ip] = true
	}
	cidr := m.a.cidr
	for ip := cidr.Addr().Next(); cidr.Contains(ip); ip = ip.Next() {
		if !used[ip] && cidr.Contains(ip.Next()) { // skip the broadcast address
			return ip, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("%w: node CIDR %s has no free address for another workload", api.ErrConflict, cidr)
}

// endpointID numbers an endpoint by its offset in the node's CIDR: stable
// across agent restarts (the pinned policy map is keyed by it) without
// keeping a separate counter.
func endpointID(cidr netip.Prefix, ip netip.Addr) uint32 {
	base := cidr.Addr().As16()
	a := ip.As16()
	return binary.BigEndian.Uint32(a[12:]) - binary.BigEndian.Uint32(base[12:])
}

// hostIfaceName derives a stable, unique interface name (<= 15 bytes) for
// the host end of a workload's veth.
func hostIfaceName(netnsName string) string {
	h := sha256.Sum256([]byte(netnsName))
	return fmt.Sprintf("wl%x", h[:6])
}

func netnsPath(name string) string { return filepath.Join("/var/run/netns", name) }

func mustLabels(ss []string) identity.Labels {
	l, err := identity.ParseLabels(ss, identity.SourceVM)
	if err != nil {
		return nil
	}
	return l
}

// plumbVeth creates the veth pair (if missing) and configures both ends.
// The agent runs in the node's network namespace; the workload end is
// created directly inside the workload's namespace.
func plumbVeth(w *workload, mtu int) error {
	ns, err := netns.GetFromPath(netnsPath(w.Netns))
	if err != nil {
		return fmt.Errorf("opening namespace: %w", err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return err
	}
	defer h.Close()

	host, err := netlink.LinkByName(w.HostIface)
	if err != nil {
		if old, lerr := h.LinkByName(workloadIface); lerr == nil {
			_ = h.LinkDel(old) // a half-made pair from an interrupted run
		}
		veth := &netlink.Veth{
			LinkAttrs:     netlink.LinkAttrs{Name: w.HostIface, MTU: mtu},
			PeerName:      workloadIface,
			PeerNamespace: netlink.NsFd(int(ns)),
		}
		if err := netlink.LinkAdd(veth); err != nil {
			return fmt.Errorf("creating veth %s: %w", w.HostIface, err)
		}
		if host, err = netlink.LinkByName(w.HostIface); err != nil {
			return err
		}
	}
	peer, err := h.LinkByName(workloadIface)
	if err != nil {
		return fmt.Errorf("workload end %s missing in %s: %w", workloadIface, w.Netns, err)
	}
	if err := netlink.LinkSetUp(host); err != nil {
		return err
	}
	if lo, err := h.LinkByName("lo"); err == nil {
		_ = h.LinkSetUp(lo)
	}
	if err := h.LinkSetUp(peer); err != nil {
		return err
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: w.IP.AsSlice(), Mask: net.CIDRMask(w.IP.BitLen(), w.IP.BitLen())}}
	if err := h.AddrReplace(peer, addr); err != nil {
		return fmt.Errorf("addressing %s: %w", w.Netns, err)
	}
	gw := net.ParseIP(gatewayIP)
	if err := h.NeighSet(&netlink.Neigh{LinkIndex: peer.Attrs().Index, State: netlink.NUD_PERMANENT, IP: gw, HardwareAddr: host.Attrs().HardwareAddr}); err != nil {
		return fmt.Errorf("gateway neighbour in %s: %w", w.Netns, err)
	}
	if err := h.RouteReplace(&netlink.Route{LinkIndex: peer.Attrs().Index, Dst: &net.IPNet{IP: gw, Mask: net.CIDRMask(32, 32)}, Scope: netlink.SCOPE_LINK}); err != nil {
		return fmt.Errorf("gateway route in %s: %w", w.Netns, err)
	}
	if err := h.RouteReplace(&netlink.Route{LinkIndex: peer.Attrs().Index, Dst: &net.IPNet{IP: net.IPv4zero, Mask: net.CIDRMask(0, 32)}, Gw: gw}); err != nil {
		return fmt.Errorf("default route in %s: %w", w.Netns, err)
	}
	if err := netlink.NeighSet(&netlink.Neigh{LinkIndex: host.Attrs().Index, State: netlink.NUD_PERMANENT, IP: w.IP.AsSlice(), HardwareAddr: peer.Attrs().HardwareAddr}); err != nil {
		return fmt.Errorf("workload neighbour: %w", err)
	}
	if err := netlink.RouteReplace(&netlink.Route{LinkIndex: host.Attrs().Index, Dst: addr.IPNet, Scope: netlink.SCOPE_LINK}); err != nil {
		return fmt.Errorf("route to workload: %w", err)
	}
	return nil
}
