package relay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// Client defaults and timing.
const (
	DefaultKeepalive = 5 * time.Second

	// missedKeepalives without an ack make the client register again.
	missedKeepalives = 3
	// registerTimeout is how long a REGISTER waits for REGISTERED.
	registerTimeout = time.Second
	ticketTimeout   = 10 * time.Second
	minBackoff      = 250 * time.Millisecond
	maxBackoff      = 30 * time.Second
	// unknownGrace ignores an UNKNOWN right after registering: it answers
	// a datagram sent before, overtaken by the registration.
	unknownGrace = 250 * time.Millisecond

	underlayBatch = 64
	proxyBatch    = 8
)

// ErrClosed is returned by a Client's methods after Close.
var ErrClosed = errors.New("relay client: closed")

// ClientConfig configures a node's relay client.
type ClientConfig struct {
	// Self is this node's ID (NodeID of its cluster and name).
	Self ID
	// WireGuard is where the local WireGuard device listens, e.g.
	// 127.0.0.1:51833; an unspecified address (0.0.0.0 or ::) means
	// 127.0.0.1.
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

// ClientStats counts what the client did since it was made.
type ClientStats struct {
	Registrations        uint64
	SentPackets          uint64 // from WireGuard to relays
	SentBytes            uint64 // their payload
	DeliveredPackets     uint64 // from relays to WireGuard
	DeliveredBytes       uint64
	DroppedNotRegistered uint64 // from WireGuard while the relay has no registration of this node
	DroppedNotWireGuard  uint64 // a payload, either way, that is no WireGuard message
	DroppedNotPeer       uint64 // DATA from a node not in SetPeers
	DroppedStranger      uint64 // datagrams on the underlay socket not from a relay
	DroppedMalformed     uint64 // from a relay, not a relay message
}

// session events, from the underlay reader to the session goroutine.
const (
	evRegistered = iota + 1
	evAck
	evUnknown
)

// relayConn is one relay, by name. Its proxies (the local sockets that
// stand for peers) outlive a change of the relay's address, so the
// WireGuard endpoints stay valid.
type relayConn struct {
	name    string
	cur     atomic.Pointer[session]
	proxies atomic.Pointer[map[ID]*proxy] // copy on write, under Client.mu
}

// session is the registration with one relay at one address.
type session struct {
	r      *relayConn
	addr   netip.AddrPort
	ticket atomic.Pointer[func(context.Context) (Ticket, error)]

	registered   atomic.Bool
	registeredAt atomic.Int64 // unix nanoseconds
	lastAck      atomic.Int64
	events       chan byte

	ctx    context.Context
	cancel context.CancelFunc
}

func (s *session) signal(ev byte) {
	select {
	case s.events <- ev:
	default: // the session has enough to act on
	}
}

// proxy is the local socket standing for one peer through one relay: the
// peer's WireGuard endpoint on this node.
type proxy struct {
	peer  ID
	r     *relayConn
	sock  *sock
	local netip.AddrPort
}

// Client is a node's side of the relays. Its methods are safe for
// concurrent use.
type Client struct {
	cfg  ClientConfig
	wg   netip.AddrPort // the WireGuard device, as the proxies reach it
	log  *slog.Logger
	sock *sock

	mu     sync.Mutex
	relays map[string]*relayConn
	closed bool

	// Read by the underlay reader without mu; replaced under mu.
	byAddr atomic.Pointer[map[netip.AddrPort]*session]
	peers  atomic.Pointer[map[ID]struct{}]

	ctx       context.Context
	cancel    context.CancelFunc
	goroutine sync.WaitGroup
	warnedMTU atomic.Bool
	closeOnce sync.Once
	closeErr  error

	registrations, sentPackets, sentBytes, deliveredPackets, deliveredBytes atomic.Uint64
	dropNotRegistered, dropNotWG, dropNotPeer, dropStranger, dropMalformed  atomic.Uint64
}

// NewClient opens the underlay socket and starts the client.
func NewClient(cfg ClientConfig) (*Client, error) {
	if !cfg.WireGuard.IsValid() || cfg.WireGuard.Port() == 0 {
		return nil, fmt.Errorf("relay client: ClientConfig.WireGuard is %v: it must be the local WireGuard device's ip:port, e.g. 127.0.0.1:51833", cfg.WireGuard)
	}
	if cfg.Keepalive < 0 {
		return nil, fmt.Errorf("relay client: ClientConfig.Keepalive is %v; it must be positive (0 for the default %v)", cfg.Keepalive, DefaultKeepalive)
	}
	if cfg.Keepalive == 0 {
		cfg.Keepalive = DefaultKeepalive
	}
	if cfg.ListenAddr == "" {
		cfg.ListenAddr = "0.0.0.0:0"
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	wg := unmap(cfg.WireGuard)
	if wg.Addr().IsUnspecified() {
		wg = netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), wg.Port())
	}
	ua, err := net.ResolveUDPAddr("udp", cfg.ListenAddr)
	if err != nil {
		return nil, fmt.Errorf("relay client: ClientConfig.ListenAddr %q is no ip:port: %w", cfg.ListenAddr, err)
	}
	uc, err := net.ListenUDP("udp", ua)
	if err != nil {
		return nil, fmt.Errorf("relay client: listening on %s: %w", cfg.ListenAddr, err)
	}
	tuneBuffers(uc)
	ctx, cancel := context.WithCancel(context.Background())
	c := &Client{cfg: cfg, wg: wg, log: cfg.Logger, sock: newSock(uc, false), relays: map[string]*relayConn{}, ctx: ctx, cancel: cancel}
	c.byAddr.Store(&map[netip.AddrPort]*session{})
	c.peers.Store(&map[ID]struct{}{})
	c.goroutine.Add(1)
	go c.readUnderlay(newReadState(underlayBatch))
	return c, nil
}

// LocalAddr is the underlay socket's address: relays see the node there
// (or at its NAT's mapping of it).
func (c *Client) LocalAddr() netip.AddrPort { return c.sock.localAddr() }

// Close stops the client and closes its sockets.
func (c *Client) Close() error {
	c.closeOnce.Do(func() {
		c.mu.Lock()
		c.closed = true
		for name, r := range c.relays {
			c.dropRelayLocked(name, r)
		}
		c.mu.Unlock()
		c.cancel()
		c.closeErr = c.sock.pc.Close()
		c.goroutine.Wait()
	})
	return c.closeErr
}

// AddRelay registers with the relay at addr, in the background, retrying
// with backoff; ticket fetches a fresh ticket whenever the client must
// (re-)register: at the start, on UNKNOWN, after 3 keepalives without an
// ack. The same name with the same address only replaces ticket; with a new
// address it registers there (the peers' local sockets stay).
func (c *Client) AddRelay(name string, addr netip.AddrPort, ticket func(ctx context.Context) (Ticket, error)) error {
	addr = unmap(addr)
	switch {
	case name == "":
		return fmt.Errorf("relay client: adding the relay at %v: it needs a name", addr)
	case !addr.IsValid() || addr.Port() == 0 || addr.Addr().IsUnspecified():
		return fmt.Errorf("relay client: relay %q at %v: the address must be a reachable ip:port", name, addr)
	case ticket == nil:
		return fmt.Errorf("relay client: relay %q: no ticket source", name)
	case c.sock.ipv4 && !addr.Addr().Is4():
		return fmt.Errorf("relay client: relay %q at %v is IPv6, but the client's socket (%s) is IPv4; listen on [::]:port to reach both", name, addr, c.LocalAddr())
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return ErrClosed
	}
	for other, r := range c.relays {
		if s := r.cur.Load(); other != name && s.addr == addr {
			return fmt.Errorf("relay client: relay %q is at %v already; one address serves one relay", other, addr)
		}
	}
	r := c.relays[name]
	if r == nil {
		r = &relayConn{name: name}
		r.proxies.Store(&map[ID]*proxy{})
		c.relays[name] = r
	} else if old := r.cur.Load(); old.addr == addr {
		old.ticket.Store(&ticket)
		return nil
	} else {
		old.cancel()
		c.log.Info("relay moved", "relay", name, "addr", addr, "was", old.addr)
	}
	s := &session{r: r, addr: addr, events: make(chan byte, 8)}
	s.ticket.Store(&ticket)
	s.ctx, s.cancel = context.WithCancel(c.ctx)
	r.cur.Store(s)
	c.indexLocked()
	c.goroutine.Add(1)
	go c.run(s)
	return nil
}

// RemoveRelay forgets a relay and closes its peers' local sockets.
func (c *Client) RemoveRelay(name string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if r, found := c.relays[name]; found {
		c.dropRelayLocked(name, r)
		c.indexLocked()
	}
}

func (c *Client) dropRelayLocked(name string, r *relayConn) {
	r.cur.Load().cancel()
	for _, p := range *r.proxies.Load() {
		_ = p.sock.pc.Close()
	}
	r.proxies.Store(&map[ID]*proxy{})
	delete(c.relays, name)
}

// indexLocked rebuilds the underlay reader's view of the relays.
func (c *Client) indexLocked() {
	m := make(map[netip.AddrPort]*session, len(c.relays))
	for _, r := range c.relays {
		s := r.cur.Load()
		m[s.addr] = s
	}
	c.byAddr.Store(&m)
}

// Registered says whether the relay has this node registered: it answered
// the registration and has not since said otherwise or missed 3 keepalives.
func (c *Client) Registered(name string) bool {
	c.mu.Lock()
	r := c.relays[name]
	c.mu.Unlock()
	return r != nil && r.cur.Load().registered.Load()
}

// Relays lists the relays, by name.
func (c *Client) Relays() []RelayStatus {
	c.mu.Lock()
	out := make([]RelayStatus, 0, len(c.relays))
	for _, r := range c.relays {
		s := r.cur.Load()
		st := RelayStatus{Name: r.name, Addr: s.addr, Registered: s.registered.Load()}
		if ns := s.lastAck.Load(); ns != 0 {
			st.LastAck = time.Unix(0, ns)
		}
		out = append(out, st)
	}
	c.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Stats returns the client's counters.
func (c *Client) Stats() ClientStats {
	return ClientStats{Registrations: c.registrations.Load(),
		SentPackets: c.sentPackets.Load(), SentBytes: c.sentBytes.Load(),
		DeliveredPackets: c.deliveredPackets.Load(), DeliveredBytes: c.deliveredBytes.Load(),
		DroppedNotRegistered: c.dropNotRegistered.Load(), DroppedNotWireGuard: c.dropNotWG.Load(),
		DroppedNotPeer: c.dropNotPeer.Load(), DroppedStranger: c.dropStranger.Load(), DroppedMalformed: c.dropMalformed.Load()}
}

// SetPeers sets the nodes that may reach this one through relays (the
// mesh's nodes); DATA from others is dropped and their local sockets are
// closed.
func (c *Client) SetPeers(ids []ID) {
	set := make(map[ID]struct{}, len(ids))
	for _, id := range ids {
		if id != c.cfg.Self {
			set[id] = struct{}{}
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if old := *c.peers.Load(); len(old) == len(set) {
		same := true
		for id := range set {
			if _, found := old[id]; !found {
				same = false
				break
			}
		}
		if same {
			return // the agent sets its peers every tick; usually nothing changed
		}
	}
	c.peers.Store(&set)
	for _, r := range c.relays {
		ps := *r.proxies.Load()
		kept := make(map[ID]*proxy, len(ps))
		for id, p := range ps {
			if _, found := set[id]; found {
				kept[id] = p
			} else {
				_ = p.sock.pc.Close()
			}
		}
		if len(kept) != len(ps) {
			r.proxies.Store(&kept)
		}
	}
}

// Endpoint returns the local address (on loopback, one socket per relay
// and peer) to set as peer's WireGuard endpoint: what WireGuard sends there
// goes to peer through the relay, and what comes from peer through the
// relay reaches WireGuard from there. peer must be among SetPeers.
func (c *Client) Endpoint(relay string, peer ID) (netip.AddrPort, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	r := c.relays[relay]
	switch {
	case c.closed:
		return netip.AddrPort{}, ErrClosed
	case r == nil:
		return netip.AddrPort{}, fmt.Errorf("relay client: no relay %q (add it with AddRelay first)", relay)
	case peer == c.cfg.Self:
		return netip.AddrPort{}, fmt.Errorf("relay client: node %s is this node, not a peer", peer)
	}
	if _, found := (*c.peers.Load())[peer]; !found {
		return netip.AddrPort{}, fmt.Errorf("relay client: node %s is not among the peers (SetPeers) and may not use the relay", peer)
	}
	p, err := c.proxyLocked(r, peer)
	if err != nil {
		return netip.AddrPort{}, err
	}
	return p.local, nil
}

// RelayOf says which relay and peer the local address ep (an Endpoint)
// stands for: WireGuard reports the endpoint it sends to, which it may
// have learned from the peer's packets.
func (c *Client) RelayOf(ep netip.AddrPort) (relay string, peer ID, ok bool) {
	ep = unmap(ep)
	c.mu.Lock()
	defer c.mu.Unlock()
	for name, r := range c.relays {
		for id, p := range *r.proxies.Load() {
			if p.local == ep {
				return name, id, true
			}
		}
	}
	return "", ID{}, false
}

// proxyLocked returns the peer's local socket for relay r, opening it if
// needed.
func (c *Client) proxyLocked(r *relayConn, peer ID) (*proxy, error) {
	ps := *r.proxies.Load()
	if p := ps[peer]; p != nil {
		return p, nil
	}
	lo := c.wg.Addr()
	if !lo.IsLoopback() {
		lo = netip.AddrFrom4([4]byte{127, 0, 0, 1})
	}
	// Connected to the device: the kernel delivers nothing else to it.
	uc, err := net.DialUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(lo, 0)), net.UDPAddrFromAddrPort(c.wg))
	if err != nil {
		return nil, fmt.Errorf("relay client: opening the local socket for peer %s through relay %q: %w", peer, r.name, err)
	}
	tuneBuffers(uc)
	p := &proxy{peer: peer, r: r, sock: newSock(uc, true)}
	p.local = p.sock.localAddr()
	next := make(map[ID]*proxy, len(ps)+1)
	for id, q := range ps {
		next[id] = q
	}
	next[peer] = p
	r.proxies.Store(&next)
	rs := newReadState(proxyBatch)
	// Room for what was read and a header for each of its segments.
	obufs := make([][]byte, proxyBatch)
	for i := range obufs {
		obufs[i] = make([]byte, MaxDatagram+kernelMaxSegments*HeaderLen)
	}
	c.goroutine.Add(1)
	go c.readProxy(p, rs, obufs)
	return p, nil
}

// ensureProxy is proxyLocked for the underlay reader: a peer's first packet
// through a relay opens its socket.
func (c *Client) ensureProxy(r *relayConn, peer ID) *proxy {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed || c.relays[r.name] != r {
		return nil
	}
	if _, found := (*c.peers.Load())[peer]; !found {
		return nil
	}
	p, err := c.proxyLocked(r, peer)
	if err != nil {
		c.log.Warn("dropping a relayed packet", "relay", r.name, "peer", peer, "err", err)
		return nil
	}
	return p
}

// run registers with a relay and keeps the registration until the session
// ends (the relay was removed or moved, or the client closed).
func (c *Client) run(s *session) {
	defer c.goroutine.Done()
	defer s.registered.Store(false)
	var backoff time.Duration
	fails := 0
	for s.ctx.Err() == nil {
		err := c.register(s)
		if err == nil {
			backoff, fails = 0, 0
			c.keepalive(s)
			continue
		}
		if s.ctx.Err() != nil {
			return
		}
		fails++
		backoff = min(max(2*backoff, minBackoff), maxBackoff)
		lvl := slog.LevelDebug
		if fails == 1 || fails%10 == 0 {
			lvl = slog.LevelInfo
		}
		c.log.Log(s.ctx, lvl, "registering with relay failed; retrying", "relay", s.r.name, "addr", s.addr, "attempts", fails, "retry", backoff, "err", err)
		// ±25% so that nodes that lost a relay together do not come back in step.
		wait := backoff*3/4 + rand.N(backoff/2+1)
		select {
		case <-s.ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

func (c *Client) register(s *session) error {
	ctx, cancel := context.WithTimeout(s.ctx, ticketTimeout)
	t, err := (*s.ticket.Load())(ctx)
	cancel()
	if err != nil {
		return fmt.Errorf("getting a ticket: %w", err)
	}
	for len(s.events) > 0 { // answers to earlier messages
		<-s.events
	}
	var b [RegisterLen]byte
	if err := c.send(AppendRegister(b[:0], t), s.addr); err != nil {
		return err
	}
	timer := time.NewTimer(registerTimeout)
	defer timer.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return s.ctx.Err()
		case <-timer.C:
			return fmt.Errorf("no answer to REGISTER within %v (relay down or the ticket refused)", registerTimeout)
		case ev := <-s.events:
			if ev != evRegistered {
				continue
			}
			now := time.Now().UnixNano()
			s.registeredAt.Store(now)
			s.lastAck.Store(now)
			s.registered.Store(true)
			c.registrations.Add(1)
			c.log.Info("registered with relay", "relay", s.r.name, "addr", s.addr, "via", c.LocalAddr())
			return nil
		}
	}
}

// keepalive keeps a registration open; it returns when the relay lost it
// (UNKNOWN), stopped answering, or the session ended.
func (c *Client) keepalive(s *session) {
	t := time.NewTicker(c.cfg.Keepalive)
	defer t.Stop()
	var b [KeepaliveLen]byte
	msg := AppendKeepalive(b[:0], c.cfg.Self)
	unacked := 0
	for {
		select {
		case <-s.ctx.Done():
			s.registered.Store(false)
			return
		case <-t.C:
			if unacked >= missedKeepalives {
				s.registered.Store(false)
				c.log.Info("relay stopped answering keepalives; registering again", "relay", s.r.name, "addr", s.addr, "missed", unacked)
				return
			}
			_ = c.send(msg, s.addr)
			unacked++
		case ev := <-s.events:
			switch ev {
			case evAck:
				unacked = 0
			case evUnknown:
				if time.Since(time.Unix(0, s.registeredAt.Load())) < unknownGrace {
					continue
				}
				s.registered.Store(false)
				c.log.Info("relay no longer knows this node (restarted, or the registration expired); registering again", "relay", s.r.name, "addr", s.addr)
				return
			}
		}
	}
}

// send writes one control message to a relay.
func (c *Client) send(b []byte, to netip.AddrPort) error {
	var err error
	if c.sock.uc != nil {
		_, err = c.sock.uc.WriteToUDPAddrPort(b, to)
	} else {
		_, err = c.sock.pc.WriteTo(b, net.UDPAddrFromAddrPort(to))
	}
	if err != nil {
		return fmt.Errorf("sending to relay %v: %w", to, err)
	}
	return nil
}

// readProxy sends what WireGuard sends to a peer's local socket to the
// peer through the relay, in batches: read many (with GRO, runs of them at
// once), put the DATA header before each, send them in one call (a run as
// one GSO datagram).
func (c *Client) readProxy(p *proxy, rs *readState, obufs [][]byte) {
	defer c.goroutine.Done()
	var hdr [HeaderLen]byte
	putHeader(hdr[:], TypeData)
	copy(hdr[MsgHeaderLen:], p.peer[:])
	for {
		rs.reset()
		n, err := rs.rb.read(p.sock, rs.ds)
		if err != nil {
			if errors.Is(err, net.ErrClosed) || c.ctx.Err() != nil {
				return
			}
			if !transient(err) {
				c.log.Debug("reading from WireGuard", "peer", p.peer, "relay", p.r.name, "err", err)
				time.Sleep(10 * time.Millisecond)
			}
			continue
		}
		s := p.r.cur.Load()
		if !s.registered.Load() {
			for i := range n {
				c.dropNotRegistered.Add(uint64(segmentCount(&rs.ds[i])))
			}
			continue
		}
		out := rs.out[:0]
		var packets, bytes, notWG, overrun uint64
		for i := range n {
			d := &rs.ds[i]
			g := d.seg
			if g <= 0 || g >= len(d.buf) {
				g = len(d.buf)
			}
			ob, w := obufs[i], 0
			for off := 0; off < len(d.buf); off += g {
				pl := d.buf[off:min(off+g, len(d.buf))]
				if wireGuardShape(pl) != wellFormed {
					notWG++
					continue
				}
				if w+HeaderLen+len(pl) > len(ob) {
					overrun++ // more segments than the kernel sends at once: not expected
					continue
				}
				copy(ob[w:], hdr[:])
				copy(ob[w+HeaderLen:], pl)
				w += HeaderLen + len(pl)
				packets++
				bytes += uint64(len(pl))
			}
			if w > 0 {
				out = append(out, datagram{buf: ob[:w], addr: s.addr, seg: g + HeaderLen})
			}
		}
		if notWG > 0 {
			c.dropNotWG.Add(notWG)
		}
		if overrun > 0 {
			c.dropMalformed.Add(overrun)
		}
		if len(out) == 0 {
			continue
		}
		c.sentPackets.Add(packets)
		c.sentBytes.Add(bytes)
		if err := rs.wb.write(c.sock, out); err != nil && c.ctx.Err() == nil {
			c.log.Debug("sending to relay", "relay", p.r.name, "err", err)
		}
		if size := c.sock.oversized(); size > 0 && !c.warnedMTU.Swap(true) {
			c.log.Warn("relayed datagrams exceed the path MTU to the relay and are fragmented, which is slow: lower the WireGuard MTU by the relay header's 12 bytes",
				"relay", p.r.name, "addr", s.addr, "datagram", size, "wireguard", size-HeaderLen)
		}
	}
}

// segmentCount is how many datagrams d holds.
func segmentCount(d *datagram) int {
	if d.seg <= 0 || d.seg >= len(d.buf) {
		return 1
	}
	return (len(d.buf) + d.seg - 1) / d.seg
}

// readUnderlay handles what relays send: registrations, acks, UNKNOWN and
// peers' packets, which go to WireGuard from the sender's local socket.
func (c *Client) readUnderlay(rs *readState) {
	defer c.goroutine.Done()
	// Where each datagram of rs.out goes.
	to := make([]*proxy, 0, cap(rs.out))
	for {
		rs.reset()
		n, err := rs.rb.read(c.sock, rs.ds)
		if err != nil {
			if errors.Is(err, net.ErrClosed) || c.ctx.Err() != nil {
				return
			}
			if !transient(err) {
				c.log.Debug("reading the underlay socket", "err", err)
				time.Sleep(10 * time.Millisecond)
			}
			continue
		}
		relays, peers := *c.byAddr.Load(), *c.peers.Load()
		out, to := rs.out[:0], to[:0]
		var bytes, stranger, notWG, malformed, notPeer uint64
		for i := range n {
			d := &rs.ds[i]
			s := relays[d.addr]
			if s == nil {
				stranger += uint64(segmentCount(d))
				continue
			}
			g := d.seg
			if g <= 0 || g >= len(d.buf) {
				g = len(d.buf)
			}
			// The payloads move to the front of the buffer, back to back,
			// so that a run for one peer goes to WireGuard as one GSO
			// datagram (dst never overtakes what is still to be read).
			w := 0
			for off := 0; off < len(d.buf); off += g {
				m := d.buf[off:min(off+g, len(d.buf))]
				typ, p := parse(m)
				if p != wellFormed {
					if p == notWireGuard {
						notWG++
					} else {
						malformed++
					}
					continue
				}
				switch typ {
				case TypeData:
					id := ID(m[MsgHeaderLen:HeaderLen])
					if _, allowed := peers[id]; !allowed {
						notPeer++
						continue
					}
					px := (*s.r.proxies.Load())[id]
					if px == nil {
						if px = c.ensureProxy(s.r, id); px == nil {
							notPeer++
							continue
						}
					}
					pl := m[HeaderLen:]
					dst := d.buf[w : w+len(pl)]
					copy(dst, pl)
					w += len(pl)
					out = append(out, datagram{buf: dst})
					to = append(to, px)
					bytes += uint64(len(pl))
				case TypeRegistered:
					if ID(m[MsgHeaderLen:RegisteredLen]) == c.cfg.Self {
						s.signal(evRegistered)
					}
				case TypeKeepalive:
					if ID(m[MsgHeaderLen:KeepaliveLen]) == c.cfg.Self {
						s.lastAck.Store(time.Now().UnixNano())
						s.signal(evAck)
					}
				case TypeUnknown:
					s.signal(evUnknown)
				default:
					malformed++ // REGISTER: relays do not send it
				}
			}
		}
		for i := 0; i < len(out); {
			j := i + 1
			for j < len(out) && to[j] == to[i] {
				j++
			}
			_ = rs.wb.write(to[i].sock, coalesce(out[i:j]))
			i = j
		}
		for _, v := range []struct {
			c *atomic.Uint64
			n uint64
		}{{&c.dropStranger, stranger}, {&c.dropNotWG, notWG}, {&c.dropMalformed, malformed}, {&c.dropNotPeer, notPeer}} {
			if v.n > 0 {
				v.c.Add(v.n)
			}
		}
		if len(out) > 0 {
			c.deliveredPackets.Add(uint64(len(out)))
			c.deliveredBytes.Add(bytes)
		}
	}
}
