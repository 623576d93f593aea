package relay

import (
	"container/list"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// Server defaults.
const (
	DefaultRate        = 256 << 20 // bytes/s per node
	DefaultBindingTTL  = 30 * time.Second
	DefaultTicketTTL   = 30 * time.Second
	DefaultMaxBindings = 65536
	DefaultMaxTickets  = 65536

	// minDefaultBurst is the default bucket at low rates (at high rates it
	// is an eighth of a second's worth).
	minDefaultBurst = 4 << 20
	// maxTicketsPerNode bounds one node's unused tickets, so that a node
	// asking for many cannot push the others' out of MaxTickets.
	maxTicketsPerNode = 16
	// unknownPerSecond bounds UNKNOWN answers, all addresses together.
	unknownPerSecond = 100
	serverBatch      = 64
)

// ServerConfig configures a relay.
type ServerConfig struct {
	// Conn is the relay's UDP socket (the agent listens on relay.port).
	// The relay never closes it. A *net.UDPConn is served in batches
	// (recvmmsg/sendmmsg on Linux); its buffers are raised to 4 MiB.
	Conn net.PacketConn
	// Logger receives what the relay does; nil discards.
	Logger *slog.Logger
	// Rate is how many bytes per second (DATA datagrams, headers included)
	// each registered node may send through the relay; 0 is DefaultRate.
	// The excess is dropped.
	Rate int64
	// Burst is the token bucket's size in bytes; 0 is an eighth of Rate,
	// at least 4 MiB. It must hold the largest datagram (65535 bytes).
	Burst int64
	// BindingTTL drops a registration without KEEPALIVE or DATA for this
	// long; 0 is DefaultBindingTTL.
	BindingTTL time.Duration
	// TicketTTL expires an unused ticket; 0 is DefaultTicketTTL.
	TicketTTL time.Duration
	// MaxBindings and MaxTickets bound the memory the relay holds (0 is
	// the default, 65536 each). A registration beyond MaxBindings drops
	// the binding silent for longest; a ticket beyond MaxTickets drops the
	// oldest ticket.
	MaxBindings, MaxTickets int
}

// ServerStats counts what the relay did since it was made.
type ServerStats struct {
	Bindings            int // registered nodes
	Tickets             int // issued, not yet used or expired
	Registrations       uint64
	ForwardedPackets    uint64
	ForwardedBytes      uint64
	DroppedUnregistered uint64 // DATA or KEEPALIVE from an address with no registration
	DroppedRateLimited  uint64 // DATA over its sender's rate
	DroppedNotWireGuard uint64 // DATA from a registered node whose payload is no WireGuard message
	DroppedUnknownPeer  uint64 // DATA for a node not registered here (or for its sender)
	DroppedBadTicket    uint64 // REGISTER with an unknown, used or expired ticket
	DroppedMalformed    uint64 // not a relay message, or one only relays send
	UnknownSent         uint64 // UNKNOWN answers
	UnknownSuppressed   uint64 // UNKNOWN answers not sent: over the global limit
}

type binding struct {
	id   ID
	addr netip.AddrPort
	seen atomic.Int64 // unix nanoseconds of its last KEEPALIVE or DATA
	// The token bucket; only the serving goroutine touches it.
	tokens float64
	last   int64
}

func (b *binding) expired(now, ttl int64) bool { return now-b.seen.Load() > ttl }

// take spends n bytes from the bucket, if it holds them.
func (b *binding) take(n int, now int64, rate, burst float64) bool {
	if el := now - b.last; el > 0 {
		b.tokens = min(burst, b.tokens+float64(el)*rate/1e9)
		b.last = now
	}
	if b.tokens < float64(n) {
		return false
	}
	b.tokens -= float64(n)
	return true
}

type ticketEntry struct {
	t       Ticket
	id      ID
	expires int64 // unix nanoseconds
}

// Server is a relay. Its methods are safe for concurrent use.
type Server struct {
	cfg         ServerConfig
	log         *slog.Logger
	sock        *sock
	rate, burst float64
	ttl         int64 // BindingTTL in nanoseconds
	serving     atomic.Bool
	rs          *readState // Serve's buffers
	warnedMTU   bool       // the serving goroutine's

	mu     sync.RWMutex // bindings; the serving goroutine only reads them per packet
	byID   map[ID]*binding
	byAddr map[netip.AddrPort]*binding

	tmu     sync.Mutex
	tickets map[Ticket]*list.Element // of *ticketEntry in order
	order   *list.List               // oldest first: expiry order, as every ticket has one TTL
	perNode map[ID]int

	// The UNKNOWN answers' bucket (serving goroutine only).
	unkTokens float64
	unkLast   int64

	registrations, forwardedPackets, forwardedBytes atomic.Uint64
	dropUnregistered, dropRate, dropNotWG           atomic.Uint64
	dropUnknownPeer, dropTicket, dropMalformed      atomic.Uint64
	unknownSent, unknownSuppressed                  atomic.Uint64
}

// NewServer checks cfg and returns a relay; Serve runs it.
func NewServer(cfg ServerConfig) (*Server, error) {
	if cfg.Conn == nil {
		return nil, errors.New("relay: ServerConfig.Conn is nil: the relay needs its UDP socket")
	}
	for _, f := range []struct {
		name string
		v    int64
		def  string
	}{
		{"Rate", cfg.Rate, "256 MiB/s"}, {"Burst", cfg.Burst, "Rate/8, at least 4 MiB"},
		{"BindingTTL", int64(cfg.BindingTTL), "30s"}, {"TicketTTL", int64(cfg.TicketTTL), "30s"},
		{"MaxBindings", int64(cfg.MaxBindings), "65536"}, {"MaxTickets", int64(cfg.MaxTickets), "65536"},
	} {
		if f.v < 0 {
			return nil, fmt.Errorf("relay: ServerConfig.%s is %d; it must be positive (0 for the default, %s)", f.name, f.v, f.def)
		}
	}
	if cfg.Rate == 0 {
		cfg.Rate = DefaultRate
	}
	if cfg.Burst == 0 {
		cfg.Burst = max(minDefaultBurst, cfg.Rate/8)
	}
	if cfg.Burst < MaxDatagram {
		return nil, fmt.Errorf("relay: ServerConfig.Burst is %d bytes, less than the largest datagram (%d): such datagrams could never pass; use at least %d (0 for the default)", cfg.Burst, MaxDatagram, MaxDatagram)
	}
	if cfg.BindingTTL == 0 {
		cfg.BindingTTL = DefaultBindingTTL
	}
	if cfg.TicketTTL == 0 {
		cfg.TicketTTL = DefaultTicketTTL
	}
	if cfg.MaxBindings == 0 {
		cfg.MaxBindings = DefaultMaxBindings
	}
	if cfg.MaxTickets == 0 {
		cfg.MaxTickets = DefaultMaxTickets
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Server{cfg: cfg, log: cfg.Logger, sock: newSock(cfg.Conn, false),
		rate: float64(cfg.Rate), burst: float64(cfg.Burst), ttl: int64(cfg.BindingTTL),
		byID: map[ID]*binding{}, byAddr: map[netip.AddrPort]*binding{},
		tickets: map[Ticket]*list.Element{}, order: list.New(), perNode: map[ID]int{},
		unkTokens: unknownPerSecond, unkLast: time.Now().UnixNano(), rs: newReadState(serverBatch)}
	if s.sock.uc != nil {
		tuneBuffers(s.sock.uc)
	}
	return s, nil
}

// Ticket issues a one-use ticket for id, valid for TicketTTL; the caller
// has authenticated the node id stands for. A node holds at most 16 unused
// tickets: a 17th drops its oldest.
func (s *Server) Ticket(id ID) (Ticket, error) {
	var t Ticket
	if _, err := rand.Read(t[:]); err != nil {
		return Ticket{}, fmt.Errorf("relay: drawing a ticket for node %s: %w", id, err)
	}
	now := time.Now().UnixNano()
	s.tmu.Lock()
	defer s.tmu.Unlock()
	s.expireTicketsLocked(now)
	if s.perNode[id] >= maxTicketsPerNode {
		for el := s.order.Front(); el != nil; el = el.Next() {
			if el.Value.(*ticketEntry).id == id {
				s.removeTicketLocked(el)
				break
			}
		}
	}
	for len(s.tickets) >= s.cfg.MaxTickets {
		s.removeTicketLocked(s.order.Front())
	}
	s.tickets[t] = s.order.PushBack(&ticketEntry{t: t, id: id, expires: now + int64(s.cfg.TicketTTL)})
	s.perNode[id]++
	return t, nil
}

func (s *Server) removeTicketLocked(el *list.Element) {
	e := s.order.Remove(el).(*ticketEntry)
	delete(s.tickets, e.t)
	if s.perNode[e.id]--; s.perNode[e.id] <= 0 {
		delete(s.perNode, e.id)
	}
}

func (s *Server) expireTicketsLocked(now int64) {
	for el := s.order.Front(); el != nil && el.Value.(*ticketEntry).expires < now; el = s.order.Front() {
		s.removeTicketLocked(el)
	}
}

// redeem uses up a ticket: the node it was issued for, if it is valid.
func (s *Server) redeem(t Ticket, now int64) (ID, bool) {
	s.tmu.Lock()
	defer s.tmu.Unlock()
	el, found := s.tickets[t]
	if !found {
		return ID{}, false
	}
	e := el.Value.(*ticketEntry)
	s.removeTicketLocked(el) // one use, valid or not
	return e.id, now <= e.expires
}

// Revoke drops id's registration and tickets (the node left or was revoked).
func (s *Server) Revoke(id ID) {
	s.mu.Lock()
	b, found := s.byID[id]
	if found {
		delete(s.byID, id)
		delete(s.byAddr, b.addr)
	}
	s.mu.Unlock()
	s.tmu.Lock()
	for el := s.order.Front(); el != nil && s.perNode[id] > 0; {
		next := el.Next()
		if el.Value.(*ticketEntry).id == id {
			s.removeTicketLocked(el)
		}
		el = next
	}
	s.tmu.Unlock()
	if found {
		s.log.Info("relay registration revoked", "node", id, "addr", b.addr)
	}
}

// Stats returns the relay's counters.
func (s *Server) Stats() ServerStats {
	s.mu.RLock()
	n := len(s.byID)
	s.mu.RUnlock()
	s.tmu.Lock()
	t := len(s.tickets)
	s.tmu.Unlock()
	return ServerStats{Bindings: n, Tickets: t, Registrations: s.registrations.Load(),
		ForwardedPackets: s.forwardedPackets.Load(), ForwardedBytes: s.forwardedBytes.Load(),
		DroppedUnregistered: s.dropUnregistered.Load(), DroppedRateLimited: s.dropRate.Load(),
		DroppedNotWireGuard: s.dropNotWG.Load(), DroppedUnknownPeer: s.dropUnknownPeer.Load(),
		DroppedBadTicket: s.dropTicket.Load(), DroppedMalformed: s.dropMalformed.Load(),
		UnknownSent: s.unknownSent.Load(), UnknownSuppressed: s.unknownSuppressed.Load()}
}

// Serve relays until ctx ends; then it returns nil and leaves the socket
// open (it is its owner's). It fails when the socket is closed under it.
// One Serve at a time.
func (s *Server) Serve(ctx context.Context) error {
	if !s.serving.CompareAndSwap(false, true) {
		return errors.New("relay: Serve is already running for this server")
	}
	defer s.serving.Store(false)
	if ctx.Err() != nil {
		return nil
	}
	// Wake the blocked read when ctx ends, and lift the deadline after.
	woke := make(chan struct{})
	stopWake := context.AfterFunc(ctx, func() {
		_ = s.cfg.Conn.SetReadDeadline(time.Unix(1, 0))
		close(woke)
	})
	defer func() {
		if !stopWake() {
			<-woke
			_ = s.cfg.Conn.SetReadDeadline(time.Time{})
		}
	}()
	jctx, jcancel := context.WithCancel(ctx)
	jdone := make(chan struct{})
	go func() {
		defer close(jdone)
		s.janitor(jctx)
	}()
	defer func() {
		jcancel()
		<-jdone
	}()
	s.log.Info("relay serving", "addr", s.sock.localAddr(), "batched", s.sock.rc != nil)

	rs := s.rs
	var st batchStats
	var failing time.Duration
	for {
		rs.reset()
		n, err := rs.rb.read(s.sock, rs.ds)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, net.ErrClosed) {
				return fmt.Errorf("relay: the socket %s was closed while serving: %w", s.sock.localAddr(), err)
			}
			if transient(err) {
				continue
			}
			// Unexpected: say so, and do not spin on it.
			failing = min(max(2*failing, 10*time.Millisecond), time.Second)
			s.log.Warn("relay: reading the socket failed; retrying", "err", err, "in", failing)
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(failing):
			}
			continue
		}
		failing = 0
		now := time.Now().UnixNano()
		out := rs.out[:0]
		for i := range n {
			d := &rs.ds[i]
			if d.seg <= 0 || d.seg >= len(d.buf) {
				out = s.handle(d, now, out, &st)
				continue
			}
			for off := 0; off < len(d.buf); off += d.seg {
				one := datagram{buf: d.buf[off:min(off+d.seg, len(d.buf))], addr: d.addr}
				out = s.handle(&one, now, out, &st)
			}
		}
		st.flush(s)
		if len(out) > 0 {
			// What came in as one run leaves as one: rewritten in place,
			// the datagrams to one destination lie back to back.
			if err := rs.wb.write(s.sock, coalesce(out)); err != nil && ctx.Err() == nil && errors.Is(err, net.ErrClosed) {
				return fmt.Errorf("relay: the socket %s was closed while serving: %w", s.sock.localAddr(), err)
			}
			if size := s.sock.oversized(); size > 0 && !s.warnedMTU {
				s.warnedMTU = true
				s.log.Warn("relayed datagrams exceed the path MTU to a node and are fragmented, which is slow: the nodes' WireGuard MTU should leave 12 bytes for the relay header", "datagram", size)
			}
		}
	}
}

// batchStats counts one batch, added to the server's counters at once.
type batchStats struct {
	packets, bytes, unregistered, rate, notWG, unknownPeer, ticket, malformed uint64
}

func (st *batchStats) flush(s *Server) {
	add := func(c *atomic.Uint64, v *uint64) {
		if *v != 0 {
			c.Add(*v)
			*v = 0
		}
	}
	add(&s.forwardedPackets, &st.packets)
	add(&s.forwardedBytes, &st.bytes)
	add(&s.dropUnregistered, &st.unregistered)
	add(&s.dropRate, &st.rate)
	add(&s.dropNotWG, &st.notWG)
	add(&s.dropUnknownPeer, &st.unknownPeer)
	add(&s.dropTicket, &st.ticket)
	add(&s.dropMalformed, &st.malformed)
}

var unknownMsg = [UnknownLen]byte{TypeUnknown, Version, 0, 0}

// handle decides about one datagram and appends what to send in answer
// (rewritten in place: the hot path copies and allocates nothing).
func (s *Server) handle(d *datagram, now int64, out []datagram, st *batchStats) []datagram {
	b := d.buf
	typ, p := parse(b)
	if p != wellFormed && p != notWireGuard {
		st.malformed++
		return out
	}
	switch typ {
	case TypeData:
		id := ID(b[MsgHeaderLen:HeaderLen])
		s.mu.RLock()
		src := s.byAddr[d.addr]
		var dst *binding
		if src != nil {
			dst = s.byID[id]
		}
		s.mu.RUnlock()
		if src == nil || src.expired(now, s.ttl) {
			st.unregistered++
			return s.unknown(d.addr, now, out)
		}
		src.seen.Store(now)
		switch {
		case p == notWireGuard:
			st.notWG++
		case dst == nil || dst == src || dst.expired(now, s.ttl):
			st.unknownPeer++
		case !src.take(len(b), now, s.rate, s.burst):
			st.rate++
		default:
			copy(b[MsgHeaderLen:HeaderLen], src.id[:])
			st.packets++
			st.bytes += uint64(len(b))
			out = append(out, datagram{buf: b, addr: dst.addr})
		}
		return out
	case TypeKeepalive:
		id := ID(b[MsgHeaderLen:KeepaliveLen])
		s.mu.RLock()
		src := s.byAddr[d.addr]
		s.mu.RUnlock()
		if src == nil || src.id != id || src.expired(now, s.ttl) {
			st.unregistered++
			return s.unknown(d.addr, now, out)
		}
		src.seen.Store(now)
		return append(out, datagram{buf: b, addr: d.addr}) // the ack: the same message
	case TypeRegister:
		id, good := s.register(Ticket(b[MsgHeaderLen:RegisterLen]), d.addr, now)
		if !good {
			st.ticket++
			return out
		}
		b = b[:RegisteredLen]
		putHeader(b, TypeRegistered)
		copy(b[MsgHeaderLen:], id[:])
		return append(out, datagram{buf: b, addr: d.addr})
	default: // REGISTERED and UNKNOWN go to clients only
		st.malformed++
		return out
	}
}

// register redeems a ticket and binds its node to the address it came
// from, replacing the node's earlier binding (its NAT rebound) and any other
// node's binding of that address.
func (s *Server) register(t Ticket, from netip.AddrPort, now int64) (ID, bool) {
	id, good := s.redeem(t, now)
	if !good {
		return ID{}, false
	}
	nb := &binding{id: id, addr: from, tokens: s.burst, last: now}
	nb.seen.Store(now)
	var evicted *binding
	s.mu.Lock()
	old := s.byID[id]
	if old != nil {
		delete(s.byAddr, old.addr)
		// The bucket carries over: registering again does not refill it.
		nb.tokens, nb.last = old.tokens, old.last
	}
	if other := s.byAddr[from]; other != nil && other.id != id {
		delete(s.byID, other.id) // that node's address is this one's now
	}
	if old == nil && len(s.byID) >= s.cfg.MaxBindings {
		for _, b := range s.byID {
			if evicted == nil || b.seen.Load() < evicted.seen.Load() {
				evicted = b
			}
		}
		delete(s.byID, evicted.id)
		delete(s.byAddr, evicted.addr)
	}
	s.byID[id], s.byAddr[from] = nb, nb
	s.mu.Unlock()
	s.registrations.Add(1)
	switch {
	case old != nil && old.addr != from:
		s.log.Info("relay registration moved", "node", id, "addr", from, "was", old.addr)
	case old == nil:
		s.log.Info("relay registration", "node", id, "addr", from)
	}
	if evicted != nil {
		s.log.Warn("relay full: dropped the registration silent for longest", "node", evicted.id, "max", s.cfg.MaxBindings)
	}
	return id, true
}

// unknown answers UNKNOWN (4 bytes, less than any message that causes it),
// at most 100 a second in all, so that the relay cannot be made to flood
// anyone.
func (s *Server) unknown(to netip.AddrPort, now int64, out []datagram) []datagram {
	if el := now - s.unkLast; el > 0 {
		s.unkTokens = min(unknownPerSecond, s.unkTokens+float64(el)*unknownPerSecond/1e9)
		s.unkLast = now
	}
	if s.unkTokens < 1 {
		s.unknownSuppressed.Add(1)
		return out
	}
	s.unkTokens--
	s.unknownSent.Add(1)
	return append(out, datagram{buf: unknownMsg[:], addr: to})
}

// janitor drops silent bindings and expired tickets while Serve runs
// (lookups ignore expired bindings anyway; this frees them).
func (s *Server) janitor(ctx context.Context) {
	every := min(max(min(s.cfg.BindingTTL, s.cfg.TicketTTL)/4, 10*time.Millisecond), time.Second)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			s.sweep(now.UnixNano())
		}
	}
}

func (s *Server) sweep(now int64) {
	var gone []*binding
	s.mu.RLock()
	for _, b := range s.byID {
		if b.expired(now, s.ttl) {
			gone = append(gone, b)
		}
	}
	s.mu.RUnlock()
	if len(gone) > 0 {
		s.mu.Lock()
		for _, b := range gone {
			// Still the node's binding and still silent (it may have
			// registered again or sent since the scan).
			if s.byID[b.id] == b && b.expired(now, s.ttl) {
				delete(s.byID, b.id)
				delete(s.byAddr, b.addr)
				s.log.Info("relay registration expired", "node", b.id, "addr", b.addr, "silent", time.Duration(now-b.seen.Load()).Round(time.Millisecond))
			}
		}
		s.mu.Unlock()
	}
	s.tmu.Lock()
	s.expireTicketsLocked(now)
	s.tmu.Unlock()
}
