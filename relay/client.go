package relay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// ClientConfig configures a node's relay client.
type ClientConfig struct {
	// Self is this node's ID.
	Self ID
	// WireGuard is where the local WireGuard device listens, e.g.
	// 127.0.0.1:51833.
	WireGuard netip.AddrPort
	// Logger receives what the client does; nil discards.
	Logger *slog.Logger
	// Keepalive is the interval of KEEPALIVE messages (default 5s); they
	// keep the registration and the NAT mapping towards the relay open.
	Keepalive time.Duration
	// ListenAddr is the underlay socket's address (default "0.0.0.0:0").
	ListenAddr string
}

// RelayStatus is one relay as the client sees it.
type RelayStatus struct {
	Name       string         `json:"name"`
	Addr       netip.AddrPort `json:"addr"`
	Registered bool           `json:"registered"`
	LastAck    time.Time      `json:"lastAck,omitzero"`
}

type relayConn struct {
	name   string
	addr   netip.AddrPort
	ticket func(context.Context) (Ticket, error)

	registered atomic.Bool
	lastAck    atomic.Int64 // unix nanoseconds
	// Maintenance state (the maintenance goroutine only).
	nextTry  time.Time
	backoff  time.Duration
	lastKeep time.Time
	fetching atomic.Bool
	removed  atomic.Bool
}

type proxyKey struct {
	relay string
	peer  ID
}

// proxy is the local socket standing for one peer through one relay: the
// peer's WireGuard endpoint on this node.
type proxy struct {
	conn  *net.UDPConn
	relay *relayConn
	peer  ID
}

// Client is a node's side of the relays. Its methods are safe for
// concurrent use.
type Client struct {
	cfg  ClientConfig
	log  *slog.Logger
	conn *net.UDPConn

	mu      sync.RWMutex
	relays  map[string]*relayConn
	byAddr  map[netip.AddrPort]*relayConn
	proxies map[proxyKey]*proxy
	allowed map[ID]bool

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// NewClient opens the underlay socket and starts the client.
func NewClient(cfg ClientConfig) (*Client, error) {
	if !cfg.WireGuard.IsValid() || cfg.WireGuard.Port() == 0 {
		return nil, errors.New("relay: the client needs the WireGuard device's local address")
	}
	if cfg.Keepalive <= 0 {
		cfg.Keepalive = 5 * time.Second
	}
	if cfg.ListenAddr == "" {
		cfg.ListenAddr = "0.0.0.0:0"
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	ua, err := net.ResolveUDPAddr("udp", cfg.ListenAddr)
	if err != nil {
		return nil, fmt.Errorf("relay client: listen address %q: %w", cfg.ListenAddr, err)
	}
	conn, err := net.ListenUDP("udp", ua)
	if err != nil {
		return nil, fmt.Errorf("relay client: listening on %s: %w", cfg.ListenAddr, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	c := &Client{cfg: cfg, log: cfg.Logger, conn: conn, relays: map[string]*relayConn{}, byAddr: map[netip.AddrPort]*relayConn{},
		proxies: map[proxyKey]*proxy{}, allowed: map[ID]bool{}, ctx: ctx, cancel: cancel}
	c.wg.Add(2)
	go c.readUnderlay()
	go c.maintain()
	return c, nil
}

// LocalAddr is the underlay socket's address.
func (c *Client) LocalAddr() netip.AddrPort { return c.conn.LocalAddr().(*net.UDPAddr).AddrPort() }

// Close stops the client and closes its sockets.
func (c *Client) Close() error {
	c.cancel()
	err := c.conn.Close()
	c.mu.Lock()
	for k, p := range c.proxies {
		p.conn.Close()
		delete(c.proxies, k)
	}
	c.mu.Unlock()
	c.wg.Wait()
	return err
}

// AddRelay registers with the relay at addr, in the background; ticket
// fetches a fresh ticket whenever the client must (re-)register. The same
// name with a new address replaces the relay.
func (c *Client) AddRelay(name string, addr netip.AddrPort, ticket func(context.Context) (Ticket, error)) error {
	if name == "" || !addr.IsValid() || addr.Port() == 0 || ticket == nil {
		return fmt.Errorf("relay client: relay %q at %v: a name, an ip:port and a ticket source are needed", name, addr)
	}
	addr = netip.AddrPortFrom(addr.Addr().Unmap(), addr.Port())
	c.mu.Lock()
	defer c.mu.Unlock()
	if old, ok := c.relays[name]; ok {
		if old.addr == addr {
			old.ticket = ticket
			return nil
		}
		c.removeLocked(name)
	}
	r := &relayConn{name: name, addr: addr, ticket: ticket, backoff: time.Second}
	c.relays[name], c.byAddr[addr] = r, r
	return nil
}

// RemoveRelay forgets a relay and closes its peers' local sockets.
func (c *Client) RemoveRelay(name string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.removeLocked(name)
}

func (c *Client) removeLocked(name string) {
	r, ok := c.relays[name]
	if !ok {
		return
	}
	r.removed.Store(true)
	delete(c.relays, name)
	if c.byAddr[r.addr] == r {
		delete(c.byAddr, r.addr)
	}
	for k, p := range c.proxies {
		if k.relay == name {
			p.conn.Close()
			delete(c.proxies, k)
		}
	}
}

// Registered says whether the relay has this node registered (an ack
// within the last three keepalives).
func (c *Client) Registered(name string) bool {
	c.mu.RLock()
	r := c.relays[name]
	c.mu.RUnlock()
	return r != nil && r.registered.Load()
}

// Relays lists the relays, by name.
func (c *Client) Relays() []RelayStatus {
	c.mu.RLock()
	out := make([]RelayStatus, 0, len(c.relays))
	for _, r := range c.relays {
		st := RelayStatus{Name: r.name, Addr: r.addr, Registered: r.registered.Load()}
		if ns := r.lastAck.Load(); ns != 0 {
			st.LastAck = time.Unix(0, ns)
		}
		out = append(out, st)
	}
	c.mu.RUnlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// SetPeers sets the nodes that may reach this one through relays; local
// sockets of others are closed.
func (c *Client) SetPeers(ids []ID) {
	allowed := make(map[ID]bool, len(ids))
	for _, id := range ids {
		allowed[id] = true
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.allowed = allowed
	for k, p := range c.proxies {
		if !allowed[k.peer] {
			p.conn.Close()
			delete(c.proxies, k)
		}
	}
}

// Endpoint returns the local address to configure as peer's WireGuard
// endpoint to reach it through the relay.
func (c *Client) Endpoint(relay string, peer ID) (netip.AddrPort, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	p, err := c.proxyLocked(relay, peer)
	if err != nil {
		return netip.AddrPort{}, err
	}
	return p.conn.LocalAddr().(*net.UDPAddr).AddrPort(), nil
}

func (c *Client) proxyLocked(relay string, peer ID) (*proxy, error) {
	k := proxyKey{relay, peer}
	if p, ok := c.proxies[k]; ok {
		return p, nil
	}
	r, ok := c.relays[relay]
	if !ok {
		return nil, fmt.Errorf("relay client: no relay %q", relay)
	}
	if c.ctx.Err() != nil {
		return nil, errors.New("relay client: closed")
	}
	lo := c.cfg.WireGuard.Addr()
	if !lo.IsLoopback() {
		lo = netip.AddrFrom4([4]byte{127, 0, 0, 1})
	}
	conn, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(lo, 0)))
	if err != nil {
		return nil, fmt.Errorf("relay client: a local socket for peer %s: %w", peer, err)
	}
	p := &proxy{conn: conn, relay: r, peer: peer}
	c.proxies[k] = p
	c.wg.Add(1)
	go c.readProxy(p)
	return p, nil
}

// readProxy sends what WireGuard sends to a peer's local socket to the
// peer through the relay.
func (c *Client) readProxy(p *proxy) {
	defer c.wg.Done()
	buf := make([]byte, 65536)
	putHeader(buf, TypeData)
	copy(buf[4:12], p.peer[:])
	for {
		n, from, err := p.conn.ReadFromUDPAddrPort(buf[HeaderLen:])
		if err != nil {
			return // closed
		}
		if from.Port() != c.cfg.WireGuard.Port() || !from.Addr().Unmap().IsLoopback() {
			continue // only the local WireGuard device sends here
		}
		if p.relay.removed.Load() {
			return
		}
		_, _ = c.conn.WriteToUDPAddrPort(buf[:HeaderLen+n], p.relay.addr)
	}
}

// readUnderlay handles what relays send: registrations, acks and peers'
// packets.
func (c *Client) readUnderlay() {
	defer c.wg.Done()
	buf := make([]byte, 65536)
	for {
		n, from, err := c.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if c.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
		c.mu.RLock()
		r := c.byAddr[from]
		c.mu.RUnlock()
		if r == nil {
			continue // not a relay of ours
		}
		m, err := Parse(buf[:n])
		if err != nil {
			continue
		}
		switch m.Type {
		case TypeRegistered, TypeKeepalive:
			if m.ID != c.cfg.Self {
				continue
			}
			if !r.registered.Swap(true) {
				c.log.Info("registered with relay", "relay", r.name, "addr", r.addr)
			}
			r.lastAck.Store(time.Now().UnixNano())
		case TypeUnknown:
			if r.registered.Swap(false) {
				c.log.Info("relay lost this node's registration; registering again", "relay", r.name)
			}
		case TypeData:
			c.deliver(r, m)
		}
	}
}

func (c *Client) deliver(r *relayConn, m Message) {
	c.mu.RLock()
	p := c.proxies[proxyKey{r.name, m.ID}]
	allowed := c.allowed[m.ID]
	c.mu.RUnlock()
	if !allowed {
		return
	}
	if p == nil {
		c.mu.Lock()
		var err error
		p, err = c.proxyLocked(r.name, m.ID)
		c.mu.Unlock()
		if err != nil {
			c.log.Warn("dropping a relayed packet", "relay", r.name, "peer", m.ID, "err", err)
			return
		}
	}
	_, _ = p.conn.WriteToUDPAddrPort(m.Payload, c.cfg.WireGuard)
}

// maintain registers with the relays and keeps the registrations alive.
func (c *Client) maintain() {
	defer c.wg.Done()
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-c.ctx.Done():
			return
		case now := <-t.C:
			c.mu.RLock()
			rs := make([]*relayConn, 0, len(c.relays))
			for _, r := range c.relays {
				rs = append(rs, r)
			}
			c.mu.RUnlock()
			for _, r := range rs {
				c.tend(r, now)
			}
		}
	}
}

func (c *Client) tend(r *relayConn, now time.Time) {
	if r.registered.Load() {
		if ack := time.Unix(0, r.lastAck.Load()); now.Sub(ack) > 3*c.cfg.Keepalive+time.Second {
			r.registered.Store(false)
			c.log.Info("relay stopped answering; registering again", "relay", r.name)
		} else if now.Sub(r.lastKeep) >= c.cfg.Keepalive {
			r.lastKeep = now
			var b [12]byte
			putHeader(b[:], TypeKeepalive)
			copy(b[4:], c.cfg.Self[:])
			_, _ = c.conn.WriteToUDPAddrPort(b[:], r.addr)
			return
		}
	}
	if r.registered.Load() || now.Before(r.nextTry) || r.fetching.Load() {
		return
	}
	r.nextTry = now.Add(r.backoff)
	r.backoff = min(2*r.backoff, 30*time.Second)
	r.fetching.Store(true)
	go func() {
		defer r.fetching.Store(false)
		ctx, cancel := context.WithTimeout(c.ctx, 5*time.Second)
		defer cancel()
		t, err := r.ticket(ctx)
		if err != nil {
			c.log.Debug("no relay ticket yet", "relay", r.name, "err", err)
			return
		}
		var b [20]byte
		putHeader(b[:], TypeRegister)
		copy(b[4:], t[:])
		_, _ = c.conn.WriteToUDPAddrPort(b[:], r.addr)
	}()
	// A registration that succeeds resets the backoff.
	if r.lastAck.Load() != 0 && now.Sub(time.Unix(0, r.lastAck.Load())) < 10*time.Second {
		r.backoff = time.Second
	}
}
