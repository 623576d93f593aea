package health

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/weftmesh/weft/agent/api"
)

// probeMagic starts every probe packet; the responder echoes only those.
// The format is the agents' contract (api.HealthProbeMagic): meshctl
// sends such probes too.
var probeMagic = [4]byte([]byte(api.HealthProbeMagic))

const probeLen = api.HealthProbeLen

// serveProbes echoes probe packets on pc until it is closed.
func serveProbes(pc net.PacketConn) error {
	buf := make([]byte, 64)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		if n != probeLen || [4]byte(buf[:4]) != probeMagic {
			continue
		}
		_, _ = pc.WriteTo(buf[:n], from)
	}
}

// probeResult is one target's answer in a round.
type probeResult struct {
	ok  bool
	rtt time.Duration
	err string
}

// prober sends one probe to each target per round and waits for the
// echoes until the round's timeout.
type prober struct {
	pc   net.PacketConn
	port int

	mu      sync.Mutex
	next    uint64
	waiting map[uint64]chan time.Time
}

func newProber(pc net.PacketConn, port int) *prober {
	return &prober{pc: pc, port: port, waiting: map[uint64]chan time.Time{}}
}

// receive matches echoes to the probes waiting for them, until pc closes.
func (p *prober) receive() {
	buf := make([]byte, 64)
	for {
		n, _, err := p.pc.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		now := time.Now()
		if n != probeLen || [4]byte(buf[:4]) != probeMagic {
			continue
		}
		id := binary.BigEndian.Uint64(buf[4:])
		p.mu.Lock()
		ch, ok := p.waiting[id]
		delete(p.waiting, id)
		p.mu.Unlock()
		if ok {
			ch <- now
		}
	}
}

// round probes every target at once and returns each one's result.
func (p *prober) round(ctx context.Context, targets []netip.Addr, timeout time.Duration) map[netip.Addr]probeResult {
	type pending struct {
		sent time.Time
		ch   chan time.Time
	}
	out := make(map[netip.Addr]probeResult, len(targets))
	waits := map[netip.Addr]pending{}
	var ids []uint64
	for _, t := range targets {
		p.mu.Lock()
		p.next++
		id := p.next
		ch := make(chan time.Time, 1)
		p.waiting[id] = ch
		p.mu.Unlock()
		ids = append(ids, id)
		var pkt [probeLen]byte
		copy(pkt[:4], probeMagic[:])
		binary.BigEndian.PutUint64(pkt[4:], id)
		sent := time.Now()
		if _, err := p.pc.WriteTo(pkt[:], net.UDPAddrFromAddrPort(netip.AddrPortFrom(t, uint16(p.port)))); err != nil {
			out[t] = probeResult{err: fmt.Sprintf("sending the probe: %v", err)}
			continue
		}
		waits[t] = pending{sent: sent, ch: ch}
	}
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for t, w := range waits {
		select {
		case at := <-w.ch:
			out[t] = probeResult{ok: true, rtt: at.Sub(w.sent)}
		case <-deadline.C:
			// Later targets may still have answered: take what is there.
			deadline.Reset(0)
			select {
			case at := <-w.ch:
				out[t] = probeResult{ok: true, rtt: at.Sub(w.sent)}
			default:
				out[t] = probeResult{err: fmt.Sprintf("no answer within %s", timeout)}
			}
		case <-ctx.Done():
			out[t] = probeResult{err: ctx.Err().Error()}
		}
	}
	p.mu.Lock()
	for _, id := range ids {
		delete(p.waiting, id)
	}
	p.mu.Unlock()
	return out
}
