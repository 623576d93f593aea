package tunnel

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"sync"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// Defaults from the design: one interface per node, UDP 51833.
const (
	DefaultName = "weft0"
	DefaultPort = 51833
)

// Kind says which WireGuard implementation carries the device.
type Kind string

// The two implementations; both are configured through wgctrl.
const (
	KindKernel    Kind = "kernel"
	KindUserspace Kind = "userspace"
)

// Mode selects the implementation.
type Mode int

// ModeAuto prefers kernel WireGuard and falls back to userspace.
const (
	ModeAuto Mode = iota
	ModeKernel
	ModeUserspace
)

// Sentinel errors.
var (
	ErrBadConfig    = errors.New("tunnel: bad configuration")
	ErrNotSupported = errors.New("tunnel: not supported")
)

// ErrDestroyed is returned by Reconcile after Destroy.
var ErrDestroyed = errors.New("tunnel: the device was destroyed (the node left)")

// Config describes the node's WireGuard interface.
type Config struct {
	// Name of the interface (default weft0). Userspace devices have a UAPI
	// socket /var/run/wireguard/<Name>.sock shared by every network
	// namespace of the machine, so names must be unique per machine.
	Name string
	// ListenPort is the UDP port (default 51833).
	ListenPort int
	// StateDir holds the private key (created 0600 on first start) and the
	// userspace helper's log.
	StateDir string
	// Addresses are assigned to the interface: the node's mesh IP.
	Addresses []netip.Prefix
	// MTU of the tunnel; 0 derives it from UnderlayMTU.
	MTU int
	// UnderlayMTU is the MTU of the underlay path; 0 uses the MTU of the
	// interface holding the default route (1500 when there is none).
	UnderlayMTU int
	// IPv4Underlay says every peer is reached over IPv4, so the smaller
	// IPv4 overhead (60 instead of 80 bytes) applies.
	IPv4Underlay bool
	// PathOverhead is what a path may add to each WireGuard datagram
	// beyond UDP (a relay's header): a derived MTU leaves room for it, so
	// a relayed full-sized packet still fits the underlay unfragmented.
	PathOverhead int
	// Mode picks kernel or userspace WireGuard (default: kernel if available).
	Mode Mode
	// Helper starts the userspace device process (see SelfHelper). Needed
	// unless Mode is ModeKernel.
	Helper HelperFunc
	// HelperStarted, when set, is called with a new helper's pid (the
	// agent of a Kubernetes node moves it out of its pod's cgroups, so
	// that a restart of the pod leaves the device running).
	HelperStarted func(pid int) error
	// Netns is the path of the network namespace to manage the device in
	// (e.g. /var/run/netns/NAME); empty means the caller's. Lets one process
	// drive several nodes in tests and labs.
	Netns string
	// Logger receives what the tunnel does; nil discards.
	Logger *slog.Logger
}

var nameRE = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,15}$`)

func (c *Config) validate() error {
	if c.Name == "" {
		c.Name = DefaultName
	}
	if !nameRE.MatchString(c.Name) || c.Name == "." || c.Name == ".." {
		return fmt.Errorf("%w: interface name %q: use 1 to 15 letters, digits, '_', '.' or '-'", ErrBadConfig, c.Name)
	}
	if c.ListenPort == 0 {
		c.ListenPort = DefaultPort
	}
	if c.ListenPort < 1 || c.ListenPort > 65535 {
		return fmt.Errorf("%w: listen port %d is outside 1..65535", ErrBadConfig, c.ListenPort)
	}
	if c.StateDir == "" {
		return fmt.Errorf("%w: a state directory is needed to keep the private key", ErrBadConfig)
	}
	for _, a := range c.Addresses {
		if !a.IsValid() || a.Addr().Zone() != "" || a.Addr().Is4In6() {
			return fmt.Errorf("%w: interface address %v is not a plain IP prefix such as 100.64.0.1/32", ErrBadConfig, a)
		}
	}
	if c.MTU != 0 {
		if err := checkMTU(c.MTU); err != nil {
			return fmt.Errorf("%w: %w", ErrBadConfig, err)
		}
	}
	if c.PathOverhead < 0 || c.PathOverhead > 256 {
		return fmt.Errorf("%w: path overhead %d is outside 0..256", ErrBadConfig, c.PathOverhead)
	}
	if c.UnderlayMTU < 0 {
		return fmt.Errorf("%w: underlay MTU %d is negative", ErrBadConfig, c.UnderlayMTU)
	}
	if c.Mode != ModeKernel && c.Helper == nil {
		return fmt.Errorf("%w: userspace WireGuard may be needed and no Helper is set (use SelfHelper)", ErrBadConfig)
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

// Tunnel is the node's WireGuard interface. Its methods are safe for
// concurrent use.
type Tunnel struct {
	cfg  Config
	log  *slog.Logger
	sys  *system
	wg   wgClient
	rt   routeTable
	kind Kind
	mtu  int

	mu     sync.Mutex
	key    wgtypes.Key
	helper *helperProc
	// destroyed is set by Destroy: the device is gone for good and is
	// not recreated.
	destroyed    bool
	desired      []Peer
	lastEndpoint map[wgtypes.Key]netip.AddrPort
	// rotating wakes Run when a peer starts rotating, so it switches to
	// fast polling at once instead of at its next slow tick.
	rotating chan struct{}
}

// Open creates the interface or attaches to the one a previous agent left
// running, loads (or generates) the private key and applies the device
// settings. Peers come with Reconcile.
func Open(ctx context.Context, cfg Config) (*Tunnel, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	key, created, err := loadOrCreateKey(filepath.Join(cfg.StateDir, keyFile))
	if err != nil {
		return nil, err
	}
	if created {
		cfg.Logger.Info("generated WireGuard private key", "public_key", key.PublicKey().String())
	}
	sys, err := openSystem(cfg.Netns)
	if err != nil {
		return nil, err
	}
	t := &Tunnel{
		cfg:          cfg,
		log:          cfg.Logger.With("interface", cfg.Name),
		sys:          sys,
		wg:           sys.wg,
		key:          key,
		lastEndpoint: map[wgtypes.Key]netip.AddrPort{},
		rotating:     make(chan struct{}, 1),
	}
	if err := t.setMTU(); err != nil {
		sys.close()
		return nil, err
	}
	if err := t.ensureDevice(ctx); err != nil {
		sys.close()
		return nil, err
	}
	return t, nil
}

func (t *Tunnel) setMTU() error {
	if t.cfg.MTU != 0 {
		t.mtu = t.cfg.MTU
		return nil
	}
	under := t.cfg.UnderlayMTU
	if under == 0 {
		under = t.sys.defaultRouteMTU()
	}
	mtu, err := MTUFor(under-t.cfg.PathOverhead, !t.cfg.IPv4Underlay)
	if err != nil {
		return err
	}
	t.mtu = mtu
	return nil
}

// ensureDevice makes the interface exist with the right key, port, MTU and
// addresses, writing only what differs.
func (t *Tunnel) ensureDevice(ctx context.Context) error {
	kind, helper, err := t.sys.ensureLink(ctx, t.cfg, t.mtu, t.log)
	if err != nil {
		return err
	}
	t.kind, t.helper = kind, helper
	if t.rt == nil {
		t.rt = t.sys.routes(t.cfg.Name, t.cfg.Addresses)
	}
	if err := t.sys.configureLink(t.cfg.Name, t.mtu, t.cfg.Addresses); err != nil {
		return err
	}
	dev, err := t.wg.Device(t.cfg.Name)
	if err != nil {
		return fmt.Errorf("reading WireGuard device %s: %w", t.cfg.Name, err)
	}
	var c wgtypes.Config
	write := false
	if dev.PrivateKey != t.key {
		c.PrivateKey = &t.key
		write = true
	}
	if dev.ListenPort != t.cfg.ListenPort {
		c.ListenPort = &t.cfg.ListenPort
		write = true
	}
	if write {
		if err := t.wg.ConfigureDevice(t.cfg.Name, c); err != nil {
			return fmt.Errorf("setting key and port of %s: %w (is UDP port %d free?)", t.cfg.Name, err, t.cfg.ListenPort)
		}
	}
	t.log.Info("WireGuard device ready", "kind", string(t.kind), "mtu", t.mtu, "port", t.cfg.ListenPort, "public_key", t.key.PublicKey().String())
	return nil
}

// Name is the interface name.
func (t *Tunnel) Name() string { return t.cfg.Name }

// Kind says whether kernel or userspace WireGuard carries the device.
func (t *Tunnel) Kind() Kind { return t.kind }

// MTU is the tunnel MTU in use.
func (t *Tunnel) MTU() int { return t.mtu }

// ListenPort is the UDP port peers reach this node at.
func (t *Tunnel) ListenPort() int { return t.cfg.ListenPort }

// PublicKey is the key other nodes configure for this one.
func (t *Tunnel) PublicKey() wgtypes.Key {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.key.PublicKey()
}

// HelperPID is the process id of the userspace device helper (0 for kernel
// WireGuard or when unknown).
func (t *Tunnel) HelperPID() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.helper == nil {
		return 0
	}
	return t.helper.pid
}

// Reconcile makes the device's peers and routes equal to desired, writing
// only the difference. Invalid input is refused as a whole and changes
// nothing. If the userspace helper has died, it is restarted first.
func (t *Tunnel) Reconcile(ctx context.Context, desired []Peer) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.destroyed {
		return ErrDestroyed
	}
	specs, err := validatePeers(desired, t.key.PublicKey())
	if err != nil {
		return err
	}
	dev, err := t.wg.Device(t.cfg.Name)
	if err != nil {
		if !isGone(err) {
			return fmt.Errorf("reading WireGuard device %s: %w", t.cfg.Name, err)
		}
		t.log.Warn("WireGuard device is gone; recreating it", "err", err)
		if err := t.ensureDevice(ctx); err != nil {
			return err
		}
		if dev, err = t.wg.Device(t.cfg.Name); err != nil {
			return fmt.Errorf("reading WireGuard device %s: %w", t.cfg.Name, err)
		}
	}
	routes, err := t.rt.List()
	if err != nil {
		return fmt.Errorf("listing routes through %s: %w", t.cfg.Name, err)
	}
	p := makePlan(dev, routes, specs, t.lastEndpoint)
	t.desired = append([]Peer(nil), desired...)
	for _, s := range specs {
		if s.next != nil {
			select {
			case t.rotating <- struct{}{}:
			default:
			}
			break
		}
	}
	if !p.empty() {
		if err := t.apply(p); err != nil {
			return err
		}
	}
	t.lastEndpoint = p.endpoints
	return nil
}

func (t *Tunnel) apply(p *plan) error {
	if len(p.peers) > 0 {
		if err := t.wg.ConfigureDevice(t.cfg.Name, wgtypes.Config{Peers: p.peers}); err != nil {
			return fmt.Errorf("configuring peers of %s: %w", t.cfg.Name, err)
		}
		for _, pc := range p.peers {
			switch {
			case pc.Remove:
				t.log.Info("peer removed", "peer", pc.PublicKey.String())
			case !pc.UpdateOnly:
				t.log.Info("peer added", "peer", pc.PublicKey.String(), "allowed_ips", formatPrefixes(fromIPNets(pc.AllowedIPs)), "endpoint", pc.Endpoint)
			default:
				t.log.Info("peer updated", "peer", pc.PublicKey.String(), "allowed_ips", formatPrefixes(fromIPNets(pc.AllowedIPs)), "endpoint", pc.Endpoint)
			}
		}
	}
	for _, r := range p.addRoutes {
		if err := t.rt.Add(r); err != nil {
			return fmt.Errorf("adding route %s via %s: %w", r, t.cfg.Name, err)
		}
	}
	for _, r := range p.delRoutes {
		if err := t.rt.Del(r); err != nil {
			return fmt.Errorf("removing route %s via %s: %w", r, t.cfg.Name, err)
		}
	}
	return nil
}

// Run re-applies the last desired peers periodically until ctx ends: it
// restarts a userspace helper that died and moves a rotating peer's
// prefixes to its new key as soon as that key has handshaken. It polls
// faster while a peer is rotating.
func (t *Tunnel) Run(ctx context.Context, interval time.Duration) error {
	if interval <= 0 {
		interval = 5 * time.Second
	}
	const rotatingInterval = 50 * time.Millisecond
	timer := time.NewTimer(interval)
	defer timer.Stop()
	for {
		// A userspace helper that dies takes the device, its peers and its
		// routes with it: replace it at once, not at the next tick.
		var helperGone <-chan struct{}
		t.mu.Lock()
		if t.destroyed {
			t.mu.Unlock()
			return nil
		}
		if t.helper != nil {
			helperGone = t.helper.exitCh()
		}
		t.mu.Unlock()
		died := time.Time{}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-timer.C:
		case <-helperGone:
			died = time.Now()
			t.log.Warn("the userspace WireGuard helper exited; starting a new one")
			if !timer.Stop() {
				select {
				case <-timer.C:
				default:
				}
			}
		case <-t.rotating:
			if !timer.Stop() {
				select {
				case <-timer.C:
				default:
				}
			}
		}
		t.mu.Lock()
		desired := t.desired
		t.mu.Unlock()
		next := interval
		for _, p := range desired {
			if p.NextPublicKey != "" {
				next = rotatingInterval
			}
		}
		if desired != nil {
			if err := t.Reconcile(ctx, desired); err != nil {
				t.log.Warn("periodic reconcile failed", "err", err)
				if !died.IsZero() {
					next = time.Second // try the replacement again soon
				}
			} else if !died.IsZero() {
				t.log.Info("replaced the userspace WireGuard helper", "took", time.Since(died).Round(time.Millisecond), "pid", t.HelperPID())
			}
		}
		timer.Reset(next)
	}
}

// PeerStatus is what `meshctl status` shows for one peer.
type PeerStatus struct {
	PublicKey     string         `json:"publicKey"`
	Endpoint      string         `json:"endpoint,omitempty"`
	AllowedIPs    []netip.Prefix `json:"allowedIPs"`
	LastHandshake time.Time      `json:"lastHandshake"`
	RxBytes       int64          `json:"rxBytes"`
	TxBytes       int64          `json:"txBytes"`
	Keepalive     time.Duration  `json:"keepalive"`
}

// Status is the device and its peers as WireGuard reports them.
type Status struct {
	Name       string       `json:"name"`
	Kind       Kind         `json:"kind"`
	PublicKey  string       `json:"publicKey"`
	ListenPort int          `json:"listenPort"`
	MTU        int          `json:"mtu"`
	Peers      []PeerStatus `json:"peers"`
}

// Status reads the live state of the device.
func (t *Tunnel) Status() (Status, error) {
	dev, err := t.wg.Device(t.cfg.Name)
	if err != nil {
		return Status{}, fmt.Errorf("reading WireGuard device %s: %w", t.cfg.Name, err)
	}
	s := Status{Name: t.cfg.Name, Kind: t.kind, PublicKey: dev.PublicKey.String(), ListenPort: dev.ListenPort, MTU: t.mtu}
	for _, p := range dev.Peers {
		ps := PeerStatus{
			PublicKey:     p.PublicKey.String(),
			AllowedIPs:    fromIPNets(p.AllowedIPs),
			LastHandshake: p.LastHandshakeTime,
			RxBytes:       p.ReceiveBytes,
			TxBytes:       p.TransmitBytes,
			Keepalive:     p.PersistentKeepaliveInterval,
		}
		if p.Endpoint != nil {
			ps.Endpoint = p.Endpoint.String()
		}
		s.Peers = append(s.Peers, ps)
	}
	return s, nil
}

// PrepareRotation creates the next private key (kept beside the current
// one) and returns its public key, which the node announces to its peers
// before switching to it with Rotate. Calling it again returns the same
// next key.
func (t *Tunnel) PrepareRotation() (wgtypes.Key, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	k, _, err := loadOrCreateKey(filepath.Join(t.cfg.StateDir, nextKeyFile))
	if err != nil {
		return wgtypes.Key{}, err
	}
	return k.PublicKey(), nil
}

// Rotate switches the device to the prepared next key (or a fresh one when
// none was prepared) and returns the new public key. The new key is on disk
// before the device uses it, so a crash never leaves the device with a key
// the node forgot.
func (t *Tunnel) Rotate() (wgtypes.Key, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	nextPath := filepath.Join(t.cfg.StateDir, nextKeyFile)
	k, _, err := loadOrCreateKey(nextPath)
	if err != nil {
		return wgtypes.Key{}, err
	}
	if err := writeKey(filepath.Join(t.cfg.StateDir, keyFile), k); err != nil {
		return wgtypes.Key{}, err
	}
	if err := os.Remove(nextPath); err != nil {
		return wgtypes.Key{}, fmt.Errorf("removing the consumed next key: %w", err)
	}
	if err := t.wg.ConfigureDevice(t.cfg.Name, wgtypes.Config{PrivateKey: &k}); err != nil {
		return wgtypes.Key{}, fmt.Errorf("setting the new private key on %s: %w", t.cfg.Name, err)
	}
	old := t.key
	t.key = k
	t.log.Info("rotated WireGuard key", "old_public_key", old.PublicKey().String(), "public_key", k.PublicKey().String())
	return k.PublicKey(), nil
}

// Close releases this process's handles and leaves the device running, so
// an agent restart does not interrupt traffic; the next Open attaches to it.
func (t *Tunnel) Close() error {
	t.sys.close()
	return nil
}

// Destroy removes the device (stopping the userspace helper) and with it
// every route through it. For `meshctl down` and tests.
func (t *Tunnel) Destroy() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	// Before the helper goes: its exit must not make Run bring it back.
	t.destroyed = true
	err := t.sys.removeLink(t.cfg.Name, t.kind, t.helper)
	t.sys.close()
	return err
}
