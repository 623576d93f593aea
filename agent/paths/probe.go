package paths

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"
)

// The direct-path check of a relayed pair: a small UDP datagram to the
// peer's underlay address and its answer. It tells whether UDP between the
// two nodes gets through again (a firewall healed, a route came back)
// without moving the pair's traffic off the relay to find out.
//
// A check carries an HMAC under the mesh's shared key, so only mesh nodes
// get answers; an answer is no bigger than its check (no amplification),
// and it repeats the check's random nonce under the key, so it cannot be
// forged by someone who did not see the check.
const (
	probeMagic = "WFPC"
	probeReq   = 1
	probeResp  = 2
	// ProbeLen is the size of a check and of its answer.
	ProbeLen = 4 + 4 + 8 + 16
)

// Prober answers direct-path checks and sends them.
type Prober struct {
	conn net.PacketConn
	key  []byte

	mu      sync.Mutex
	waiting map[uint64]chan struct{}
}

// NewProber answers and sends checks on conn (the agent listens on the
// path-probe port) with key, the mesh's shared secret.
func NewProber(conn net.PacketConn, key []byte) (*Prober, error) {
	if len(key) < 16 {
		return nil, errors.New("paths: the probe key must be at least 16 bytes")
	}
	return &Prober{conn: conn, key: key, waiting: map[uint64]chan struct{}{}}, nil
}

func (p *Prober) mac(b []byte) []byte {
	h := hmac.New(sha256.New, p.key)
	h.Write(b[:16])
	return h.Sum(nil)[:16]
}

// encode writes a message of kind with nonce into b (ProbeLen bytes).
func (p *Prober) encode(b []byte, kind byte, nonce uint64) {
	copy(b, probeMagic)
	b[4], b[5], b[6], b[7] = kind, 0, 0, 0
	binary.BigEndian.PutUint64(b[8:], nonce)
	copy(b[16:], p.mac(b))
}

// ParseProbe checks a datagram's shape and returns its kind and nonce;
// the MAC is checked by the receiver that holds the key.
func ParseProbe(b []byte) (kind byte, nonce uint64, err error) {
	if len(b) != ProbeLen {
		return 0, 0, fmt.Errorf("paths: a check is %d bytes, got %d", ProbeLen, len(b))
	}
	if string(b[:4]) != probeMagic {
		return 0, 0, errors.New("paths: not a direct-path check (bad magic)")
	}
	if b[4] != probeReq && b[4] != probeResp || b[5] != 0 || b[6] != 0 || b[7] != 0 {
		return 0, 0, fmt.Errorf("paths: unknown check kind %d", b[4])
	}
	return b[4], binary.BigEndian.Uint64(b[8:16]), nil
}

// Serve answers checks and matches answers until ctx ends or the
// connection is closed.
func (p *Prober) Serve(ctx context.Context) error {
	go func() {
		<-ctx.Done()
		_ = p.conn.Close()
	}()
	buf := make([]byte, 64)
	for {
		n, from, err := p.conn.ReadFrom(buf)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			continue
		}
		kind, nonce, err := ParseProbe(buf[:n])
		if err != nil || !hmac.Equal(buf[16:n], p.mac(buf[:n])) {
			continue // not a mesh node's: no answer
		}
		switch kind {
		case probeReq:
			p.encode(buf[:ProbeLen], probeResp, nonce)
			_, _ = p.conn.WriteTo(buf[:ProbeLen], from)
		case probeResp:
			p.mu.Lock()
			if ch, ok := p.waiting[nonce]; ok {
				close(ch)
				delete(p.waiting, nonce)
			}
			p.mu.Unlock()
		}
	}
}

// Check sends a check to each address (three times, against loss) and
// returns the first that answered within timeout.
func (p *Prober) Check(ctx context.Context, to []netip.AddrPort, timeout time.Duration) (netip.AddrPort, bool) {
	type sent struct {
		ap    netip.AddrPort
		nonce uint64
		ch    chan struct{}
	}
	var all []sent
	p.mu.Lock()
	for _, ap := range to {
		var nb [8]byte
		_, _ = rand.Read(nb[:])
		s := sent{ap: ap, nonce: binary.BigEndian.Uint64(nb[:]), ch: make(chan struct{})}
		p.waiting[s.nonce] = s.ch
		all = append(all, s)
	}
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		for _, s := range all {
			delete(p.waiting, s.nonce)
		}
		p.mu.Unlock()
	}()
	buf := make([]byte, ProbeLen)
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	resend := time.NewTicker(timeout / 3)
	defer resend.Stop()
	send := func() {
		for _, s := range all {
			p.encode(buf, probeReq, s.nonce)
			_, _ = p.conn.WriteTo(buf, net.UDPAddrFromAddrPort(s.ap))
		}
	}
	send()
	for {
		for _, s := range all {
			select {
			case <-s.ch:
				return s.ap, true
			default:
			}
		}
		select {
		case <-ctx.Done():
			return netip.AddrPort{}, false
		case <-deadline.C:
			return netip.AddrPort{}, false
		case <-resend.C:
			send()
		case <-time.After(20 * time.Millisecond):
		}
	}
}
