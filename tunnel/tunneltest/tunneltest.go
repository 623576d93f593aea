// Package tunneltest is an in-memory WireGuard device for unit tests of
// code that drives a tunnel: it validates peers exactly as a real device
// does and records what it was told, so an agent runs without root, a TUN
// device or a userspace WireGuard helper (like wireguard-go's
// conn/bindtest). Only tests import it.
package tunneltest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/weftmesh/weft/tunnel"
)

// Device is an in-memory tunnel. The zero value is not usable: use New.
type Device struct {
	mu         sync.Mutex
	name       string
	port       int
	mtu        int
	key        wgtypes.Key
	next       *wgtypes.Key
	peers      []tunnel.Peer
	handshakes map[string]time.Time
	rx         map[string]int64
	reconciles int
	failNext   error
	closed     bool
	destroyed  bool
}

// New returns a device with a fresh key.
func New(name string, port int) *Device {
	k, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		panic(fmt.Sprintf("tunneltest: generating a key: %v", err))
	}
	return &Device{name: name, port: port, mtu: 1420, key: k, handshakes: map[string]time.Time{}, rx: map[string]int64{}}
}

// Open is a tunnel factory (the agent's Options.OpenTunnel) that returns
// the device d, taking the name and port from the configuration. Like a
// real device, d outlives the agent that closed it: opening it again keeps
// its key and peers (a destroyed one comes back empty).
func (d *Device) Open(_ context.Context, cfg tunnel.Config) (*Device, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.name, d.port = cfg.Name, cfg.ListenPort
	d.closed, d.destroyed = false, false
	return d, nil
}

func (d *Device) Name() string      { return d.name }
func (d *Device) Kind() tunnel.Kind { return tunnel.Kind("memory") }
func (d *Device) MTU() int          { return d.mtu }
func (d *Device) ListenPort() int   { return d.port }

// PublicKey is the device's current public key.
func (d *Device) PublicKey() wgtypes.Key {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.key.PublicKey()
}

// Reconcile validates desired like a real device and then holds it; a bad
// set changes nothing.
func (d *Device) Reconcile(_ context.Context, desired []tunnel.Peer) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return errors.New("tunneltest: device is closed")
	}
	if err := d.failNext; err != nil {
		d.failNext = nil
		return err
	}
	if err := tunnel.ValidatePeers(desired, d.key.PublicKey()); err != nil {
		return err
	}
	d.peers = clonePeers(desired)
	d.reconciles++
	return nil
}

// FailNextReconcile makes the next Reconcile return err (and change
// nothing), as a device whose helper died would.
func (d *Device) FailNextReconcile(err error) {
	d.mu.Lock()
	d.failNext = err
	d.mu.Unlock()
}

// Peers returns the peers of the last successful Reconcile.
func (d *Device) Peers() []tunnel.Peer {
	d.mu.Lock()
	defer d.mu.Unlock()
	return clonePeers(d.peers)
}

// Reconciles counts successful Reconcile calls.
func (d *Device) Reconciles() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.reconciles
}

// SetHandshake records a completed handshake with the peer of key, as
// Status will report it.
func (d *Device) SetHandshake(key string, at time.Time) {
	d.mu.Lock()
	d.handshakes[key] = at
	d.mu.Unlock()
}

// AddRx counts n bytes received from the peer of key, as traffic or a
// keepalive from a live peer would.
func (d *Device) AddRx(key string, n int64) {
	d.mu.Lock()
	d.rx[key] += n
	d.mu.Unlock()
}

// Status reports the device and its peers, as wgctrl would (a rotating
// peer appears as two entries, the next key's without prefixes).
func (d *Device) Status() (tunnel.Status, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return tunnel.Status{}, errors.New("tunneltest: device is closed")
	}
	st := tunnel.Status{Name: d.name, Kind: tunnel.Kind("memory"), PublicKey: d.key.PublicKey().String(), ListenPort: d.port, MTU: d.mtu}
	for _, p := range d.peers {
		st.Peers = append(st.Peers, tunnel.PeerStatus{PublicKey: p.PublicKey, Endpoint: p.Endpoint,
			AllowedIPs: slices.Clone(p.AllowedIPs), LastHandshake: d.handshakes[p.PublicKey], RxBytes: d.rx[p.PublicKey], Keepalive: p.Keepalive})
		if p.NextPublicKey != "" {
			st.Peers = append(st.Peers, tunnel.PeerStatus{PublicKey: p.NextPublicKey, LastHandshake: d.handshakes[p.NextPublicKey]})
		}
	}
	return st, nil
}

// Run returns when ctx ends (a real device's upkeep loop).
func (d *Device) Run(ctx context.Context, _ time.Duration) error {
	<-ctx.Done()
	return ctx.Err()
}

// PrepareRotation creates the next key (once; again returns the same).
func (d *Device) PrepareRotation() (wgtypes.Key, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.next == nil {
		k, err := wgtypes.GeneratePrivateKey()
		if err != nil {
			return wgtypes.Key{}, err
		}
		d.next = &k
	}
	return d.next.PublicKey(), nil
}

// Rotate switches to the prepared key.
func (d *Device) Rotate() (wgtypes.Key, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.next == nil {
		return wgtypes.Key{}, errors.New("tunneltest: no prepared key; call PrepareRotation first")
	}
	d.key, d.next = *d.next, nil
	return d.key.PublicKey(), nil
}

// Close marks the device closed; it stays "in the kernel" (Destroyed is
// false), as a real device outlives its agent.
func (d *Device) Close() error {
	d.mu.Lock()
	d.closed = true
	d.mu.Unlock()
	return nil
}

// Destroy removes the device.
func (d *Device) Destroy() error {
	d.mu.Lock()
	d.closed, d.destroyed, d.peers = true, true, nil
	d.mu.Unlock()
	return nil
}

// Destroyed reports whether Destroy was called (the node left).
func (d *Device) Destroyed() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.destroyed
}

func clonePeers(ps []tunnel.Peer) []tunnel.Peer {
	out := make([]tunnel.Peer, len(ps))
	for i, p := range ps {
		out[i] = p
		out[i].AllowedIPs = slices.Clone(p.AllowedIPs)
	}
	return out
}
