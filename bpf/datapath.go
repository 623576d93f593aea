package bpf

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/rlimit"
)

// layoutVersion changes whenever a map's key or value layout or meaning
// changes, so that an agent never runs programs against maps it does not
// understand. Version 2 added the veth's ifindex to the endpoint value;
// pins of version 1 are migrated (pin.go, layoutMigrations).
const layoutVersion uint32 = 2

// metaMap is the pinned map holding layoutVersion.
const metaMap = "weft_meta"

var (
	// ErrIncompatiblePins means pinned maps were made by a datapath with a
	// different layout; see docs/datapath.md ("Restarts and upgrades").
	ErrIncompatiblePins = errors.New("bpf: pinned maps have an incompatible layout")
	// ErrNotAttached is returned when detaching an interface that has no
	// Weft programs.
	ErrNotAttached = errors.New("bpf: no Weft programs attached to the interface")
)

// Datapath is a loaded set of Weft's programs and maps. Its methods are safe
// for concurrent use.
type Datapath struct {
	cfg  Config
	log  *slog.Logger
	dir  string // pin directory; "" when ephemeral
	objs datapathObjects

	mu       sync.Mutex
	attached map[string]*attachment // by interface name
	// bound are workload addresses bound to their veth explicitly
	// (BindWorkload), where the node does not route to the veth itself.
	bound  map[netip.Addr]int
	closed bool

	policyMu   sync.Mutex // serialises SetPolicy's read-modify-write of policy_meta
	settingsMu sync.Mutex // serialises read-modify-writes of the settings entry

	// progsLoaded is closed when the workload programs, which load in the
	// background after Open returns, are in objs; progsErr tells whether
	// that failed. See loadObjects.
	progsLoaded chan struct{}
	progsErr    error
}

// Open loads the datapath. Without Config.Ephemeral, it first re-opens the
// maps pinned under PinRoot/Scope (creating them, and mounting bpffs at
// /sys/fs/bpf, if missing), so state survives an agent restart. Programs
// are always loaded fresh; attaching them replaces the pinned ones in place.
// With Config.LazyWorkloadPrograms, Open returns once the host-device
// programs are loaded and the workload programs follow in the background.
// Missing kernel features give errors that wrap ebpf.ErrNotSupported.
func Open(cfg Config) (*Datapath, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, fmt.Errorf("bpf: lifting the memlock limit: %w", err)
	}
	spec, err := loadDatapath()
	if err != nil {
		return nil, fmt.Errorf("bpf: reading the embedded object: %w", err)
	}
	if err := configure(spec, cfg); err != nil {
		return nil, err
	}
	d := &Datapath{cfg: cfg, log: cfg.Logger, attached: map[string]*attachment{}, bound: map[netip.Addr]int{}}
	var repl map[string]*ebpf.Map
	if !cfg.Ephemeral {
		if err := ensureBPFFS(cfg.PinRoot); err != nil {
			return nil, err
		}
		d.dir = filepath.Join(cfg.PinRoot, cfg.Scope)
		if err := os.MkdirAll(filepath.Join(d.dir, "links"), 0o700); err != nil {
			return nil, fmt.Errorf("bpf: creating pin directory: %w", err)
		}
		repl, err = openPinnedMaps(spec, d.dir, d.log)
		if err != nil {
			return nil, err
		}
		defer func() {
			for _, m := range repl {
				m.Close()
			}
		}()
	}
	if err := d.loadObjects(spec, repl); err != nil {
		return nil, loadError(err)
	}
	if !cfg.LazyWorkloadPrograms {
		if err := d.workloadPrograms(); err != nil {
			d.Close()
			return nil, err
		}
	}
	d.log.Info("datapath loaded", "pins", d.dir, "ephemeral", cfg.Ephemeral)
	return d, nil
}

// loadError says why loading failed, with the verifier's log if it refused.
func loadError(err error) error {
	var ve *ebpf.VerifierError
	if errors.As(err, &ve) {
		return fmt.Errorf("bpf: the kernel's verifier refused the datapath: %+v", ve)
	}
	return fmt.Errorf("bpf: loading the datapath: %w", err)
}

// configure applies sizes and load-time constants to the spec.
func configure(spec *ebpf.CollectionSpec, cfg Config) error {
	sizes := map[string]uint32{
		"ipcache":     cfg.IPCacheEntries,
		"endpoints":   cfg.EndpointEntries,
		"policy_meta": cfg.EndpointEntries,
		"policy":      cfg.PolicyEntries,
		"ct":          cfg.ConntrackEntries,
		"events":      cfg.EventsBytes,
	}
	for name, n := range sizes {
		ms, ok := spec.Maps[name]
		if !ok {
			return fmt.Errorf("bpf: embedded object has no map %q", name)
		}
		ms.MaxEntries = n
	}
	vars := map[string]uint32{
		"ct_timeout_syn":      uint32(cfg.Timeouts.TCPSyn.Seconds()),
		"ct_timeout_tcp":      uint32(cfg.Timeouts.TCPEstablished.Seconds()),
		"ct_timeout_closing":  uint32(cfg.Timeouts.TCPClosing.Seconds()),
		"ct_timeout_udp":      uint32(cfg.Timeouts.UDP.Seconds()),
		"ct_timeout_icmp":     uint32(cfg.Timeouts.ICMP.Seconds()),
		"ct_timeout_other":    uint32(cfg.Timeouts.Other.Seconds()),
		"drop_events_per_sec": cfg.DropEventsPerSecond,
		"drop_events_burst":   cfg.DropEventsBurst,
	}
	ports := map[string]uint16{
		"node_port_api":    cfg.ControlPorts.API,
		"node_port_gossip": cfg.ControlPorts.Gossip,
		"node_port_probe":  cfg.ControlPorts.Probe,
	}
	set := func(name string, v any) error {
		vs, ok := spec.Variables[name]
		if !ok {
			return fmt.Errorf("bpf: embedded object has no constant %q", name)
		}
		if err := vs.Set(v); err != nil {
			return fmt.Errorf("bpf: setting %s: %w", name, err)
		}
		return nil
	}
	for name, v := range vars {
		if err := set(name, v); err != nil {
			return err
		}
	}
	for name, v := range ports {
		if err := set(name, v); err != nil {
			return err
		}
	}
	return nil
}

// Close releases this process's handles. Pinned maps and attached
// programs stay: traffic keeps flowing under the last policy until an agent
// opens the datapath again. An ephemeral datapath detaches everything.
func (d *Datapath) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil
	}
	d.closed = true
	_ = d.workloadPrograms() // objs is complete only then
	var errs []error
	for name, a := range d.attached {
		if d.dir == "" {
			errs = append(errs, a.detach())
		} else {
			a.release()
		}
		delete(d.attached, name)
	}
	errs = append(errs, d.objs.Close())
	return errors.Join(errs...)
}

// Remove detaches the programs from every interface this scope attached
// them to, then removes the scope's pins and closes the datapath. Traffic
// is no longer filtered afterwards. Call it from the network namespace the
// interfaces are in.
func (d *Datapath) Remove() error {
	var errs []error
	ifaces := map[string]bool{}
	if d.dir != "" {
		entries, _ := os.ReadDir(filepath.Join(d.dir, "links"))
		for _, e := range entries {
			if iface, _, ok := strings.Cut(e.Name(), "@"); ok {
				ifaces[iface] = true
			}
		}
	}
	d.mu.Lock()
	for iface := range d.attached {
		ifaces[iface] = true
	}
	d.mu.Unlock()
	for iface := range ifaces {
		if err := d.Detach(iface); err != nil && !errors.Is(err, ErrNotAttached) {
			errs = append(errs, err)
		}
	}
	errs = append(errs, d.Close())
	if d.dir != "" {
		if err := os.RemoveAll(d.dir); err != nil {
			errs = append(errs, fmt.Errorf("bpf: removing pins: %w", err))
		}
	}
	return errors.Join(errs...)
}

// PinDir returns the directory holding this datapath's pins ("" when
// ephemeral).
func (d *Datapath) PinDir() string { return d.dir }
