package agent

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"sync"

	"github.com/weftmesh/weft/agent/api"
	"github.com/weftmesh/weft/agent/config"
	"github.com/weftmesh/weft/identity"
	"github.com/weftmesh/weft/policy"
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

	// A Kubernetes pod (weft-cni): Netns is the path the runtime gave,
	// IfName the interface inside the pod; Chained means another plugin
	// made the veth and the address, and owns them.
	IfName      string `json:"ifName,omitempty"`
	ContainerID string `json:"containerID,omitempty"`
	Pod         string `json:"pod,omitempty"` // namespace/name
	PodUID      string `json:"podUID,omitempty"`
	Chained     bool   `json:"chained,omitempty"`
	// Ports are the pod's named container ports.
	Ports []policy.NamedPort `json:"ports,omitempty"`
	// routeSrc, for pods, is the source the node uses towards the pod:
	// its mesh address, the host identity there, so that the kubelet's
	// probes are the node's (which NetworkPolicies always allow), not the
	// underlay address's (the world).
	routeSrc netip.Addr
}

// ifName is the workload's interface inside its namespace.
func (w *workload) ifName() string {
	if w.IfName != "" {
		return w.IfName
	}
	return workloadIface
}

// vethPlumber connects a workload's network namespace to the node; the
// kernel's (kernelVeths) creates veth pairs, unit tests use a fake.
type vethPlumber interface {
	// NetnsExists reports whether the namespace exists: a name under
	// /var/run/netns, or a path (pods).
	NetnsExists(name string) bool
	// Plumb creates (if missing) and configures the workload's veth pair.
	Plumb(w *workload, mtu int) error
	// Unplumb removes the host end (and with it the pair); a pair that is
	// already gone is not an error.
	Unplumb(w *workload) error
}

// workloadAttacher attaches the datapath to a workload's host interface.
type workloadAttacher interface {
	AttachWorkload(iface string) error
	// BindWorkload binds the address to the veth where the node does not
	// route it there (chained after the bridge plugin).
	BindWorkload(addr netip.Addr, iface string) error
}

// nodeAddressing is the node's CIDR and mesh IP, once known.
type nodeAddressing func() (cidr netip.Prefix, meshIP netip.Addr)

// netnsSource is the workload source for network namespaces (`meshctl
// endpoint add`, the configuration's workloads): a veth pair, an address
// from the node's CIDR, routes, the datapath programs, and the endpoint
// (identity, policy, record) through the endpoint manager. It keeps its
// workloads in a state file, so a restarted agent restores them.
type netnsSource struct {
	stateFile string
	addr      nodeAddressing
	mtu       func() int
	labels    func(map[string]string) (identity.Labels, error)
	veths     vethPlumber
	dp        workloadAttacher
	eps       *endpointManager
	log       *slog.Logger

	mu sync.Mutex
	wl map[string]*workload // by name
	// adding holds the names and addresses of workloads being set up, so
	// two concurrent adds never take one address or plumb one namespace.
	adding map[string]netip.Addr
}

func newNetnsSource(stateDir string, addr nodeAddressing, mtu func() int, labels func(map[string]string) (identity.Labels, error),
	veths vethPlumber, dp workloadAttacher, eps *endpointManager, log *slog.Logger) *netnsSource {
	return &netnsSource{stateFile: filepath.Join(stateDir, workloadStateFile), addr: addr, mtu: mtu, labels: labels,
		veths: veths, dp: dp, eps: eps, log: log, wl: map[string]*workload{}, adding: map[string]netip.Addr{}}
}

// restore brings back the workloads of the previous run (their veths and
// pinned datapath state survived it) and adds the declared ones.
func (m *netnsSource) restore(ctx context.Context, declared []config.Workload) error {
	var saved []workload
	if data, err := os.ReadFile(m.stateFile); err == nil {
		if err := json.Unmarshal(data, &saved); err != nil {
			m.log.Error("workload state file is corrupt; starting without it", "file", m.stateFile, "err", err)
			saved = nil
		}
	}
	cidr, _ := m.addr()
	for _, w := range saved {
		if !m.veths.NetnsExists(w.Netns) {
			m.log.Warn("workload namespace is gone; dropping the workload", "workload", w.Name, "netns", w.Netns)
			continue
		}
		if !cidr.Contains(w.IP) {
			m.log.Warn("workload address is outside this node's CIDR; re-adding it", "workload", w.Name, "ip", w.IP)
			continue
		}
		w := w
		if err := m.setup(ctx, &w); err != nil {
			m.log.Error("restoring workload", "workload", w.Name, "err", err)
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
func (m *netnsSource) add(ctx context.Context, spec api.EndpointSpec) (*workload, error) {
	if spec.Netns == "" {
		return nil, api.Errorf(api.CodeInvalid, "netns is required (the name of a namespace in `ip netns list`)")
	}
	if err := config.ValidateName("workload", spec.Netns); err != nil {
		return nil, api.Errorf(api.CodeInvalid, "%v", err)
	}
	if !m.veths.NetnsExists(spec.Netns) {
		return nil, api.Errorf(api.CodeInvalid, "network namespace %q not found (create it with `ip netns add %s`)", spec.Netns, spec.Netns)
	}
	labels, err := m.labels(spec.Labels)
	if err != nil {
		return nil, api.Errorf(api.CodeInvalid, "%v", err)
	}
	m.mu.Lock()
	if w, ok := m.wl[spec.Netns]; ok {
		m.mu.Unlock()
		if have, err := identity.ParseLabels(w.Labels, identity.SourceVM); err == nil && have.Equal(labels) {
			return w, nil
		}
		return nil, api.Errorf(api.CodeConflict, "workload %s exists with labels %v; remove it first to change them", w.Name, w.Labels)
	}
	if _, busy := m.adding[spec.Netns]; busy {
		m.mu.Unlock()
		return nil, api.Errorf(api.CodeConflict, "workload %s is being added by another request; retry in a moment", spec.Netns)
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
	cidr, _ := m.addr()
	w := &workload{
		Name: spec.Netns, Netns: spec.Netns, IP: ip, ID: endpointID(cidr, ip),
		HostIface: hostIfaceName(spec.Netns), Labels: labels.Strings(),
	}
	if err := m.setup(ctx, w); err != nil {
		_ = m.veths.Unplumb(w)
		return nil, err
	}
	return w, m.save()
}

// setup does (or re-does, idempotently) everything a workload needs.
func (m *netnsSource) setup(ctx context.Context, w *workload) error {
	labels, err := identity.ParseLabels(w.Labels, identity.SourceVM)
	if err != nil {
		// Only a hand-edited state file gets here.
		return fmt.Errorf("workload %s: its saved labels %v do not parse (%v): remove it and add it again", w.Name, w.Labels, err)
	}
	id, err := m.eps.add(ctx, endpointSpec{Name: w.Name, ID: w.ID, IP: w.IP, Labels: labels, Ports: w.Ports}, func() error {
		if w.Pod != "" {
			_, w.routeSrc = m.addr()
		}
		if !w.Chained {
			if err := m.veths.Plumb(w, m.mtu()); err != nil {
				return fmt.Errorf("connecting namespace %s: %w", w.Netns, err)
			}
		}
		if err := m.dp.AttachWorkload(w.HostIface); err != nil {
			return fmt.Errorf("attaching datapath to %s: %w", w.HostIface, err)
		}
		if w.Chained {
			if err := m.dp.BindWorkload(w.IP, w.HostIface); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	w.Identity = id
	m.mu.Lock()
	m.wl[w.Name] = w
	m.mu.Unlock()
	m.log.Info("workload ready", "workload", w.Name, "ip", w.IP, "identity", id, "labels", labels.String())
	return nil
}

func (m *netnsSource) remove(ctx context.Context, name string) error {
	m.mu.Lock()
	w, ok := m.wl[name]
	if ok {
		delete(m.wl, name)
	}
	m.mu.Unlock()
	if !ok {
		return api.Errorf(api.CodeNotFound, "no local workload named %q (see `meshctl endpoints`)", name)
	}
	errs := []error{m.eps.remove(ctx, w.IP, w.Identity), m.veths.Unplumb(w), m.save()}
	return errors.Join(errs...)
}

func (m *netnsSource) removeAll(ctx context.Context) error {
	var errs []error
	for _, w := range m.list() {
		errs = append(errs, m.remove(ctx, w.Name))
	}
	return errors.Join(errs...)
}

// reallocate re-registers workloads whose identity was collected while the
// node's lease was lost.
func (m *netnsSource) reallocate(ctx context.Context, lost identity.NumericIdentity) {
	for _, w := range m.list() {
		if w.Identity == lost {
			if err := m.setup(ctx, w); err != nil {
				m.log.Error("re-allocating identity", "workload", w.Name, "err", err)
			}
		}
	}
}

func (m *netnsSource) list() []*workload {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]*workload, 0, len(m.wl))
	for _, w := range m.wl {
		out = append(out, w)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

func (m *netnsSource) save() error {
	ws := m.list()
	out := make([]workload, 0, len(ws))
	for _, w := range ws {
		out = append(out, *w)
	}
	data, err := json.MarshalIndent(out, "", "  ")
	if err != nil {
		return err
	}
	tmp := m.stateFile + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return fmt.Errorf("saving workload state: %w", err)
	}
	return os.Rename(tmp, m.stateFile)
}

// freeIP returns the lowest address of the node's CIDR no workload uses;
// the network address and the node's mesh IP are never handed out. Caller
// holds m.mu.
func (m *netnsSource) freeIP() (netip.Addr, error) {
	cidr, meshIP := m.addr()
	used := map[netip.Addr]bool{meshIP: true}
	for _, w := range m.wl {
		used[w.IP] = true
	}
	for _, ip := range m.adding {
		used[ip] = true
	}
	for ip := cidr.Addr().Next(); cidr.Contains(ip); ip = ip.Next() {
		if !used[ip] && cidr.Contains(ip.Next()) { // skip the broadcast address
			return ip, nil
		}
	}
	return netip.Addr{}, api.Errorf(api.CodeConflict, "node CIDR %s has no free address for another workload", cidr)
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
