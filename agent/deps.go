package agent

import (
	"context"
	"net/netip"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/weftmesh/weft/agent/flowcollect"
	"github.com/weftmesh/weft/bpf"
	"github.com/weftmesh/weft/kvstore"
	"github.com/weftmesh/weft/tunnel"
)

// Device is the node's WireGuard tunnel as the agent drives it: a
// *tunnel.Tunnel, or an in-memory tunneltest.Device in unit tests.
type Device interface {
	peerDevice
	Name() string
	Kind() tunnel.Kind
	MTU() int
	ListenPort() int
	Status() (tunnel.Status, error)
	// Run keeps the device healthy until ctx ends.
	Run(ctx context.Context, interval time.Duration) error
	PrepareRotation() (wgtypes.Key, error)
	Rotate() (wgtypes.Key, error)
	// Close lets go of the device, which stays up (agent restarts keep
	// traffic); Destroy removes it (the node left).
	Close() error
	Destroy() error
}

// Datapath is the eBPF datapath as the agent programs it: the kernel's
// (kernelDatapath), or an in-memory bpftest.Datapath in unit tests.
type Datapath interface {
	policyDatapath
	AttachHostDevice(iface string) error
	AttachWorkload(iface string) error
	BindWorkload(addr netip.Addr, iface string) error
	underlayDatapath
	DeleteEndpoint(addr netip.Addr) error
	Events() (flowcollect.EventSource, error)
	Metrics() (bpf.Metrics, error)
	MapUsage() ([]bpf.MapUsage, error)
	PinDir() string
	// Close lets go of the datapath, whose pinned state stays; Remove
	// removes it (the node left).
	Close() error
	Remove() error
}

// OpenTunnelFunc opens (or takes over) the node's WireGuard device.
type OpenTunnelFunc func(ctx context.Context, cfg tunnel.Config) (Device, error)

// OpenDatapathFunc loads (or takes over) the node's datapath.
type OpenDatapathFunc func(cfg bpf.Config) (Datapath, error)

// openKernelTunnel is the default OpenTunnelFunc.
func openKernelTunnel(ctx context.Context, cfg tunnel.Config) (Device, error) {
	t, err := tunnel.Open(ctx, cfg)
	if err != nil {
		return nil, err
	}
	return t, nil
}

// openKernelDatapath is the default OpenDatapathFunc.
func openKernelDatapath(cfg bpf.Config) (Datapath, error) {
	d, err := bpf.Open(cfg)
	if err != nil {
		return nil, err
	}
	return kernelDatapath{d}, nil
}

// kernelDatapath adapts *bpf.Datapath, whose Events returns its concrete
// reader, to Datapath.
type kernelDatapath struct{ *bpf.Datapath }

func (k kernelDatapath) Events() (flowcollect.EventSource, error) { return k.Datapath.Events() }

// nodeSet is the node cache as the reconcilers read it.
type nodeSet interface {
	Range(func(key string, n kvstore.Node) bool)
	Get(key string) (kvstore.Node, bool)
}

// recordWriter writes this node's leased records (the session).
type recordWriter interface {
	Put(ctx context.Context, key string, rec kvstore.Record) error
	Delete(ctx context.Context, key string) error
}

var (
	_ Device   = (*tunnel.Tunnel)(nil)
	_ Datapath = kernelDatapath{}
)
