package health

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/netip"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/weftmesh/weft/agent/api"
)

// Default ports, bound on the node's mesh address only.
const (
	DefaultGossipPort = 51836               // memberlist, TCP and UDP
	DefaultProbePort  = api.HealthProbePort // probe echo, UDP
)

// Timing defaults: a node that stops answering is down after DownAfter
// failed probes, i.e. within (DownAfter+1) * ProbeInterval.
const (
	DefaultProbeInterval = time.Second
	DefaultProbeTimeout  = 800 * time.Millisecond
	DefaultDownAfter     = 2
)

// ErrConfig is wrapped by configuration errors.
var ErrConfig = errors.New("health: invalid configuration")

// Target is a node of the mesh to watch.
type Target struct {
	Node, Cluster string
	MeshIP        netip.Addr
}

// Name is the node's gossip name: cluster/node.
func (t Target) Name() string { return t.Cluster + "/" + t.Node }

// Config configures a Monitor.
type Config struct {
	Self Target
	// Key encrypts gossip (AES-GCM): 16, 24 or 32 bytes shared by every
	// node of the mesh.
	Key        []byte
	GossipPort int
	ProbePort  int
	// Targets lists the mesh's nodes (this one may be among them); it is
	// called every probe round.
	Targets       func() []Target
	ProbeInterval time.Duration
	ProbeTimeout  time.Duration
	DownAfter     int
	Logger        *slog.Logger
}

func (c *Config) defaults() error {
	if c.GossipPort == 0 {
		c.GossipPort = DefaultGossipPort
	}
	if c.ProbePort == 0 {
		c.ProbePort = DefaultProbePort
	}
	if c.ProbeInterval == 0 {
		c.ProbeInterval = DefaultProbeInterval
	}
	if c.ProbeTimeout == 0 {
		c.ProbeTimeout = DefaultProbeTimeout
	}
	if c.DownAfter == 0 {
		c.DownAfter = DefaultDownAfter
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	switch {
	case !c.Self.MeshIP.IsValid():
		return fmt.Errorf("%w: the node's mesh address is not set", ErrConfig)
	case c.Self.Node == "" || c.Self.Cluster == "":
		return fmt.Errorf("%w: the node's name and cluster are required", ErrConfig)
	case len(c.Key) != 16 && len(c.Key) != 24 && len(c.Key) != 32:
		return fmt.Errorf("%w: the gossip key has %d bytes; it needs 16, 24 or 32", ErrConfig, len(c.Key))
	case c.Targets == nil:
		return fmt.Errorf("%w: no target list", ErrConfig)
	case c.ProbeTimeout >= c.ProbeInterval:
		return fmt.Errorf("%w: the probe timeout (%s) must be shorter than the interval (%s)", ErrConfig, c.ProbeTimeout, c.ProbeInterval)
	}
	return nil
}

// Monitor runs gossip and probes for one node.
type Monitor struct {
	cfg Config
	log *slog.Logger

	mu      sync.Mutex
	peers   map[string]*peerState // by Target.Name()
	members map[string]string     // gossip state by name
	ml      *memberlist.Memberlist
	// pr sends the probes; Ping borrows it (nil until Run binds it).
	pr *prober
	// OnRound, when set, is called after each probe round (metrics).
	onRound func()
}

// New checks cfg; Run does the work.
func New(cfg Config) (*Monitor, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	return &Monitor{cfg: cfg, log: cfg.Logger, peers: map[string]*peerState{}, members: map[string]string{}}, nil
}

// SetOnRound installs a function called after every probe round.
func (m *Monitor) SetOnRound(f func()) { m.mu.Lock(); m.onRound = f; m.mu.Unlock() }

// Run binds the probe responder and gossip on the mesh address and probes
// until ctx ends; it then leaves the gossip group.
func (m *Monitor) Run(ctx context.Context) error {
	ip := m.cfg.Self.MeshIP.String()
	resp, err := net.ListenPacket("udp", net.JoinHostPort(ip, strconv.Itoa(m.cfg.ProbePort)))
	if err != nil {
		return fmt.Errorf("health: probe responder on %s:%d: %w", ip, m.cfg.ProbePort, err)
	}
	defer resp.Close()
	go func() { _ = serveProbes(resp) }()

	pc, err := net.ListenPacket("udp", net.JoinHostPort(ip, "0"))
	if err != nil {
		return fmt.Errorf("health: probe socket on %s: %w", ip, err)
	}
	defer pc.Close()
	pr := newProber(pc, m.cfg.ProbePort)
	go pr.receive()
	m.mu.Lock()
	m.pr = pr
	m.mu.Unlock()
	defer func() { m.mu.Lock(); m.pr = nil; m.mu.Unlock() }()

	ml, err := m.startGossip()
	if err != nil {
		return err
	}
	m.mu.Lock()
	m.ml = ml
	m.mu.Unlock()
	defer func() {
		_ = ml.Leave(time.Second)
		_ = ml.Shutdown()
	}()

	go m.joinLoop(ctx, ml)

	tick := time.NewTicker(m.cfg.ProbeInterval)
	defer tick.Stop()
	for {
		m.probeRound(ctx, pr)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
}

func (m *Monitor) others() []Target {
	var out []Target
	for _, t := range m.cfg.Targets() {
		if t.Name() == m.cfg.Self.Name() || !t.MeshIP.IsValid() {
			continue
		}
		out = append(out, t)
	}
	return out
}

func (m *Monitor) probeRound(ctx context.Context, pr *prober) {
	targets := m.others()
	addrs := make([]netip.Addr, 0, len(targets))
	for _, t := range targets {
		addrs = append(addrs, t.MeshIP)
	}
	res := pr.round(ctx, addrs, m.cfg.ProbeTimeout)
	now := time.Now()
	m.mu.Lock()
	keep := map[string]bool{}
	for _, t := range targets {
		keep[t.Name()] = true
		p := m.peers[t.Name()]
		if p == nil {
			p = &peerState{state: StateUnknown}
			m.peers[t.Name()] = p
		}
		r := res[t.MeshIP]
		prev := p.state
		p.observe(r.ok, r.rtt, now, r.err, m.cfg.DownAfter)
		if prev != p.state && prev != StateUnknown {
			m.log.Info("node reachability changed", "node", t.Name(), "from", prev, "to", p.state, "err", r.err)
		}
	}
	for name := range m.peers {
		if !keep[name] {
			delete(m.peers, name)
		}
	}
	f := m.onRound
	m.mu.Unlock()
	if f != nil {
		f()
	}
}

// View is this node's view of every other node.
func (m *Monitor) View() api.NodeHealth {
	v := api.NodeHealth{Node: m.cfg.Self.Node, Cluster: m.cfg.Self.Cluster, MeshIP: m.cfg.Self.MeshIP.String(), Probes: []api.Probe{}}
	targets := m.others()
	m.mu.Lock()
	defer m.mu.Unlock()
	suspects := map[string]bool{}
	if m.ml != nil {
		for _, n := range m.ml.Members() {
			if n.State == memberlist.StateSuspect {
				suspects[n.Name] = true
			}
		}
	}
	for _, t := range targets {
		pr := api.Probe{Node: t.Node, Cluster: t.Cluster, MeshIP: t.MeshIP.String(), State: StateUnknown, Member: MemberUnknown}
		probeState := ""
		if p := m.peers[t.Name()]; p != nil {
			probeState = p.state
			pr.RTT, pr.LastSuccess, pr.Failures, pr.Error = api.Duration(p.rtt), p.lastSuccess, p.failures, p.lastErr
		}
		if s, ok := m.members[t.Name()]; ok {
			pr.Member = s
		}
		if suspects[t.Name()] {
			pr.Member = MemberSuspect
		}
		pr.State = combined(probeState, pr.Member)
		v.Probes = append(v.Probes, pr)
	}
	sort.Slice(v.Probes, func(i, j int) bool {
		return v.Probes[i].Cluster+"/"+v.Probes[i].Node < v.Probes[j].Cluster+"/"+v.Probes[j].Node
	})
	return v
}

// startGossip starts memberlist on the mesh address, tuned so a dead node
// is declared dead within a few seconds in a small mesh.
func (m *Monitor) startGossip() (*memberlist.Memberlist, error) {
	c := memberlist.DefaultLANConfig()
	c.Name = m.cfg.Self.Name()
	c.BindAddr = m.cfg.Self.MeshIP.String()
	c.BindPort = m.cfg.GossipPort
	c.AdvertiseAddr = c.BindAddr
	c.AdvertisePort = c.BindPort
	c.SecretKey = m.cfg.Key
	c.GossipVerifyIncoming, c.GossipVerifyOutgoing = true, true
	c.ProbeInterval = m.cfg.ProbeInterval
	c.ProbeTimeout = m.cfg.ProbeTimeout / 2
	c.SuspicionMult = 2
	c.TCPTimeout = 2 * time.Second
	c.PushPullInterval = 15 * time.Second
	c.Events = &events{m: m}
	c.Logger = log.New(&logWriter{log: m.log.With("component", "gossip")}, "", 0)
	c.LogOutput = nil
	ml, err := memberlist.Create(c)
	if err != nil {
		return nil, fmt.Errorf("health: starting gossip on %s:%d: %w", c.BindAddr, c.BindPort, err)
	}
	return ml, nil
}

// joinLoop keeps trying to join the nodes gossip does not know alive (new
// nodes, nodes back after an outage).
func (m *Monitor) joinLoop(ctx context.Context, ml *memberlist.Memberlist) {
	tick := time.NewTicker(2 * time.Second)
	defer tick.Stop()
	for {
		alive := map[string]bool{}
		for _, n := range ml.Members() {
			alive[n.Name] = true
		}
		var addrs []string
		for _, t := range m.others() {
			if !alive[t.Name()] {
				addrs = append(addrs, net.JoinHostPort(t.MeshIP.String(), strconv.Itoa(m.cfg.GossipPort)))
			}
		}
		if len(addrs) > 0 {
			if n, err := ml.Join(addrs); err != nil {
				m.log.Debug("gossip join", "tried", len(addrs), "joined", n, "err", err)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// events records gossip membership changes.
type events struct{ m *Monitor }

func (e *events) set(n *memberlist.Node, state string) {
	e.m.mu.Lock()
	prev := e.m.members[n.Name]
	e.m.members[n.Name] = state
	e.m.mu.Unlock()
	if prev != state && n.Name != e.m.cfg.Self.Name() {
		e.m.log.Info("gossip membership changed", "node", n.Name, "state", state)
	}
}

func (e *events) NotifyJoin(n *memberlist.Node)   { e.set(n, MemberAlive) }
func (e *events) NotifyUpdate(n *memberlist.Node) { e.set(n, MemberAlive) }
func (e *events) NotifyLeave(n *memberlist.Node) {
	if n.State == memberlist.StateLeft {
		e.set(n, MemberLeft)
		return
	}
	e.set(n, MemberDead)
}

// logWriter turns memberlist's log lines into slog records: its errors are
// about peers (which health reports), so they are warnings of this agent.
type logWriter struct{ log *slog.Logger }

func (w *logWriter) Write(p []byte) (int, error) {
	line := string(bytes.TrimSpace(p))
	level := slog.LevelDebug
	switch {
	case bytes.Contains(p, []byte("[ERR]")):
		level = slog.LevelWarn
	case bytes.Contains(p, []byte("[WARN]")):
		level = slog.LevelInfo
	}
	w.log.Log(context.Background(), level, line)
	return len(p), nil
}

var _ io.Writer = (*logWriter)(nil)

// ErrNotRunning is Ping's error before Run bound the probe socket.
var ErrNotRunning = errors.New("health: the monitor is not running")

// Ping sends one probe to ip (a node's mesh address, so it goes through
// the tunnel) and returns its round trip, or why there was none.
func (m *Monitor) Ping(ctx context.Context, ip netip.Addr, timeout time.Duration) (time.Duration, error) {
	m.mu.Lock()
	pr := m.pr
	m.mu.Unlock()
	if pr == nil {
		return 0, ErrNotRunning
	}
	r := pr.round(ctx, []netip.Addr{ip}, timeout)[ip]
	if !r.ok {
		return 0, errors.New(r.err)
	}
	return r.rtt, nil
}
