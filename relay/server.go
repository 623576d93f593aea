package relay

import (
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

// ServerConfig configures a relay.
type ServerConfig struct {
	// Conn is the relay's UDP socket (the agent listens on relay.port).
	Conn net.PacketConn
	// Logger receives what the relay does; nil discards.
	Logger *slog.Logger
	// Rate is how many bytes per second each registered node may send
	// through the relay (default 256 MiB/s); Burst the bucket (default
	// 4 MiB). The excess is dropped.
	Rate, Burst int64
	// BindingTTL drops a registration silent this long (default 30s).
	BindingTTL time.Duration
	// TicketTTL expires an unused ticket (default 30s).
	TicketTTL time.Duration
	// MaxBindings and MaxTickets bound the memory strangers or a
	// misbehaving node can make the relay hold (default 65536 each).
	MaxBindings, MaxTickets int
}

// ServerStats counts what the relay did.
type ServerStats struct {
	Bindings            int
	ForwardedPackets    uint64
	ForwardedBytes      uint64
	DroppedUnregistered uint64 // DATA or KEEPALIVE from an address with no registration
	DroppedRateLimited  uint64
	DroppedNotWireGuard uint64 // malformed, or a payload that is no WireGuard message
	DroppedUnknownPeer  uint64 // DATA for a node not registered here
	DroppedBadTicket    uint64 // REGISTER with an unknown, used or expired ticket
}

type binding struct {
	id   ID
	addr netip.AddrPort
	seen atomic.Int64 // unix nanoseconds of the last message
	// The token bucket; only the serving goroutine touches it.
	tokens float64
	last   time.Time
}

type ticketEntry struct {
	id      ID
	expires time.Time
}

// Server is a relay. Its methods are safe for concurrent use.
type Server struct {
	cfg  ServerConfig
	conn *net.UDPConn // nil when Conn is another PacketConn
	log  *slog.Logger

	mu       sync.RWMutex
	byID     map[ID]*binding
	byAddr   map[netip.AddrPort]*binding
	tickets  map[Ticket]ticketEntry
	issued   []Ticket // in issue order, for eviction
	unknowns float64  // UNKNOWN answers' bucket (serving goroutine only)
	unkLast  time.Time

	forwardedPackets, forwardedBytes                  atomic.Uint64
	dropUnregistered, dropRate, dropNotWG, dropUnkown atomic.Uint64
	dropTicket                                        atomic.Uint64
}

// NewServer checks cfg and returns a relay; Serve runs it.
func NewServer(cfg ServerConfig) (*Server, error) {
	if cfg.Conn == nil {
		return nil, errors.New("relay: no socket to serve on")
	}
	if cfg.Rate < 0 || cfg.Burst < 0 || cfg.BindingTTL < 0 || cfg.TicketTTL < 0 || cfg.MaxBindings < 0 || cfg.MaxTickets < 0 {
		return nil, errors.New("relay: negative limits in the configuration")
	}
	if cfg.Rate == 0 {
		cfg.Rate = 256 << 20
	}
	if cfg.Burst == 0 {
		cfg.Burst = 4 << 20
	}
	if cfg.BindingTTL == 0 {
		cfg.BindingTTL = 30 * time.Second
	}
	if cfg.TicketTTL == 0 {
		cfg.TicketTTL = 30 * time.Second
	}
	if cfg.MaxBindings == 0 {
		cfg.MaxBindings = 65536
	}
	if cfg.MaxTickets == 0 {
		cfg.MaxTickets = 65536
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Server{cfg: cfg, log: cfg.Logger, byID: map[ID]*binding{}, byAddr: map[netip.AddrPort]*binding{}, tickets: map[Ticket]ticketEntry{}}
	s.conn, _ = cfg.Conn.(*net.UDPConn)
	return s, nil
}

// Ticket issues a one-use ticket for id; the caller has authenticated the
// node id stands for.
func (s *Server) Ticket(id ID) (Ticket, error) {
	var t Ticket
	if _, err := rand.Read(t[:]); err != nil {
		return Ticket{}, fmt.Errorf("relay: drawing a ticket: %w", err)
	}
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	for len(s.tickets) >= s.cfg.MaxTickets && len(s.issued) > 0 {
		delete(s.tickets, s.issued[0])
		s.issued = s.issued[1:]
	}
	s.tickets[t] = ticketEntry{id: id, expires: now.Add(s.cfg.TicketTTL)}
	s.issued = append(s.issued, t)
	return t, nil
}

// Revoke drops id's registration and tickets (the node left or was revoked).
func (s *Server) Revoke(id ID) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if b, ok := s.byID[id]; ok {
		delete(s.byID, id)
		delete(s.byAddr, b.addr)
		s.log.Info("relay registration revoked", "node", id)
	}
	for t, e := range s.tickets {
		if e.id == id {
			delete(s.tickets, t)
		}
	}
}

// Stats returns the relay's counters.
func (s *Server) Stats() ServerStats {
	s.mu.RLock()
	n := len(s.byID)
	s.mu.RUnlock()
	return ServerStats{Bindings: n,
		ForwardedPackets: s.forwardedPackets.Load(), ForwardedBytes: s.forwardedBytes.Load(),
		DroppedUnregistered: s.dropUnregistered.Load(), DroppedRateLimited: s.dropRate.Load(),
		DroppedNotWireGuard: s.dropNotWG.Load(), DroppedUnknownPeer: s.dropUnkown.Load(), DroppedBadTicket: s.dropTicket.Load()}
}

func (s *Server) read(buf []byte) (int, netip.AddrPort, error) {
	if s.conn != nil {
		return s.conn.ReadFromUDPAddrPort(buf)
	}
	n, from, err := s.cfg.Conn.ReadFrom(buf)
	if err != nil {
		return 0, netip.AddrPort{}, err
	}
	ap, _ := netip.ParseAddrPort(from.String())
	return n, ap, nil
}

func (s *Server) write(b []byte, to netip.AddrPort) {
	if s.conn != nil {
		_, _ = s.conn.WriteToUDPAddrPort(b, to)
		return
	}
	_, _ = s.cfg.Conn.WriteTo(b, net.UDPAddrFromAddrPort(to))
}

// Serve relays until ctx ends (or the socket is closed by its owner).
func (s *Server) Serve(ctx context.Context) error {
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-ctx.Done():
				// Wake the read loop; the socket stays its owner's.
				_ = s.cfg.Conn.SetReadDeadline(time.Now())
				return
			case now := <-t.C:
				s.expire(now)
			}
		}
	}()
	buf := make([]byte, 65536)
	for {
		n, from, err := s.read(buf)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("relay: reading: %w", err)
		}
		s.handle(buf[:n], from.Addr().Unmap(), from)
	}
}

func (s *Server) handle(b []byte, _ netip.Addr, from netip.AddrPort) {
	from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
	m, err := Parse(b)
	if err != nil {
		s.dropNotWG.Add(1)
		return
	}
	now := time.Now()
	switch m.Type {
	case TypeRegister:
		s.register(m.Ticket, from, now)
	case TypeKeepalive:
		s.mu.RLock()
		bd := s.byAddr[from]
		s.mu.RUnlock()
		if bd == nil || bd.id != m.ID {
			s.dropUnregistered.Add(1)
			s.unknown(from, now)
			return
		}
		bd.seen.Store(now.UnixNano())
		s.write(b, from) // the ack
	case TypeData:
		s.mu.RLock()
		src := s.byAddr[from]
		var dst *binding
		if src != nil {
			dst = s.byID[m.ID]
		}
		s.mu.RUnlock()
		if src == nil {
			s.dropUnregistered.Add(1)
			s.unknown(from, now)
			return
		}
		src.seen.Store(now.UnixNano())
		if dst == nil || dst == src {
			s.dropUnkown.Add(1)
			return
		}
		if !src.take(float64(len(b)), now, s.cfg.Rate, s.cfg.Burst) {
			s.dropRate.Add(1)
			return
		}
		copy(b[4:12], src.id[:])
		s.write(b, dst.addr)
		s.forwardedPackets.Add(1)
		s.forwardedBytes.Add(uint64(len(b)))
	default:
		s.dropNotWG.Add(1) // REGISTERED and UNKNOWN go to clients only
	}
}

func (s *Server) register(t Ticket, from netip.AddrPort, now time.Time) {
	s.mu.Lock()
	e, ok := s.tickets[t]
	if ok {
		delete(s.tickets, t) // one use
	}
	if !ok || now.After(e.expires) {
		s.mu.Unlock()
		s.dropTicket.Add(1)
		return
	}
	if old, ok := s.byID[e.id]; ok {
		delete(s.byAddr, old.addr) // the node moved (NAT rebinding)
	}
	if other, ok := s.byAddr[from]; ok && other.id != e.id {
		delete(s.byID, other.id)
	}
	if _, ok := s.byID[e.id]; !ok && len(s.byID) >= s.cfg.MaxBindings {
		s.mu.Unlock()
		s.log.Warn("relay full: refusing a registration", "node", e.id, "max", s.cfg.MaxBindings)
		return
	}
	bd := &binding{id: e.id, addr: from, tokens: float64(s.cfg.Burst), last: now}
	bd.seen.Store(now.UnixNano())
	s.byID[e.id], s.byAddr[from] = bd, bd
	s.mu.Unlock()
	s.log.Info("relay registration", "node", e.id, "addr", from)
	var out [4 + 8]byte
	putHeader(out[:], TypeRegistered)
	copy(out[4:], e.id[:])
	s.write(out[:], from)
}

// unknown answers UNKNOWN (4 bytes, never more than the request), at most
// 100 a second in all, so that strangers cannot use the relay to flood.
func (s *Server) unknown(to netip.AddrPort, now time.Time) {
	s.unknowns = min(100, s.unknowns+now.Sub(s.unkLast).Seconds()*100)
	s.unkLast = now
	if s.unknowns < 1 {
		return
	}
	s.unknowns--
	var out [4]byte
	putHeader(out[:], TypeUnknown)
	s.write(out[:], to)
}

func (b *binding) take(n float64, now time.Time, rate, burst int64) bool {
	b.tokens = min(float64(burst), b.tokens+now.Sub(b.last).Seconds()*float64(rate))
	b.last = now
	if b.tokens < n {
		return false
	}
	b.tokens -= n
	return true
}

func (s *Server) expire(now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for id, b := range s.byID {
		if now.Sub(time.Unix(0, b.seen.Load())) > s.cfg.BindingTTL {
			delete(s.byID, id)
			delete(s.byAddr, b.addr)
			s.log.Info("relay registration expired", "node", id)
		}
	}
	kept := s.issued[:0]
	for _, t := range s.issued {
		if e, ok := s.tickets[t]; ok {
			if now.After(e.expires) {
				delete(s.tickets, t)
				continue
			}
			kept = append(kept, t)
		}
	}
	s.issued = kept
}
