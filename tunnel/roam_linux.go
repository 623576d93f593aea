package tunnel

import (
	"encoding/hex"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tailscale/wireguard-go/conn"
	"github.com/tailscale/wireguard-go/device"
)

// roamingBind restores endpoint learning on top of Tailscale's
// wireguard-go fork, which (unlike stock wireguard-go) never takes a peer's
// endpoint from received packets: tailscaled sets endpoints itself. Weft
// relies on it: a public node learns a NAT'd node's endpoint from its
// handshake, and a roaming peer is followed.
//
// It wraps the endpoint of every received datagram so the fork reports,
// through two optional Endpoint interfaces, whom a packet came from:
//
//   - FromPeer, after a transport packet decrypted and passed the replay
//     check (authenticated): the peer's endpoint follows it, as in stock
//     wireguard-go.
//   - InitiationMessagePublicKey, for a handshake initiation before it is
//     verified: the reply needs an endpoint, so the source becomes the
//     peer's endpoint, but only when no authenticated packet confirmed
//     another endpoint within the session lifetime (trustWindow). A forged
//     initiation can therefore only redirect a peer that has been silent
//     that long, and the real peer's next handshake takes it back.
//
// Endpoint changes are written through the device's UAPI (IpcSet), like any
// other configuration, so `wg show` and wgctrl see them.
type roamingBind struct {
	conn.Bind
	log *slog.Logger

	mu    sync.Mutex
	dev   *device.Device // set by attach, before the device comes up
	peers map[[32]byte]*roamState
	queue map[[32]byte]netip.AddrPort // authenticated changes for the worker
	// early holds, per key the device has no peer for, where its latest
	// initiation came from and when (unix seconds): a node that joined
	// reaches us before its record does, and the peer added moments later
	// is pointed there (serveUAPI). Bounded; entries expire after
	// earlyWindow.
	early map[[32]byte]earlyInit
	kick  chan struct{}
	done  chan struct{}
	// clock is a coarse time (unix seconds) for the receive path, ticked
	// by the worker, so a decrypted batch costs no clock read.
	clock atomic.Int64
}

type roamState struct {
	ep        netip.AddrPort
	confirmed int64 // unix seconds of the last authenticated packet from ep; 0: none
}

// trustWindow is how long an authenticated packet vouches for an endpoint
// against unverified initiations: WireGuard's session lifetime
// (RejectAfterTime), after which a live peer has re-handshaken anyway.
const trustWindow = 180 * time.Second

// earlyWindow is how long an initiation from a key without a peer is
// remembered: long enough for the agent to learn the new node's record and
// add it, short enough that a stale address is not used for a later join.
const earlyWindow = 30 * time.Second

// maxEarly bounds the early initiations remembered, so initiations with
// made-up keys cost a bounded amount of memory.
const maxEarly = 4096

type earlyInit struct {
	src netip.AddrPort
	at  int64
}

func newRoamingBind(b conn.Bind, log *slog.Logger) *roamingBind {
	r := &roamingBind{Bind: b, log: log, peers: map[[32]byte]*roamState{},
		queue: map[[32]byte]netip.AddrPort{}, early: map[[32]byte]earlyInit{}, kick: make(chan struct{}, 1), done: make(chan struct{})}
	r.clock.Store(time.Now().Unix())
	return r
}

// attach hands the bind the device whose peers it updates and starts
// applying learned endpoints to it.
func (r *roamingBind) attach(d *device.Device) {
	r.mu.Lock()
	r.dev = d
	r.mu.Unlock()
	go r.worker()
}

// stop ends the worker; call after the device is closed.
func (r *roamingBind) stop() { close(r.done) }

func (r *roamingBind) Open(port uint16) ([]conn.ReceiveFunc, uint16, error) {
	fns, p, err := r.Bind.Open(port)
	if err != nil {
		return nil, p, err
	}
	out := make([]conn.ReceiveFunc, len(fns))
	for i, fn := range fns {
		out[i] = func(slab []byte, packets []conn.ReceivedPacket) (int, error) {
			n, err := fn(slab, packets)
			// One wrapper per datagram: the packets split from one GRO
			// datagram share its endpoint.
			var last conn.Endpoint
			var wrapped *roamEndpoint
			for j := range packets[:n] {
				ep := packets[j].Endpoint
				if ep != last {
					last = ep
					if std, ok := ep.(*conn.StdNetEndpoint); ok {
						wrapped = &roamEndpoint{StdNetEndpoint: std, bind: r}
					} else {
						wrapped = nil
					}
				}
				if wrapped != nil {
					packets[j].Endpoint = wrapped
				}
			}
			return n, err
		}
	}
	return out, p, nil
}

// Send unwraps received endpoints (the device answers cookie requests to
// them); the fork's bind accepts only its own endpoint type.
func (r *roamingBind) Send(bufs [][]byte, ep conn.Endpoint, offset int) error {
	if w, ok := ep.(*roamEndpoint); ok {
		ep = w.StdNetEndpoint
	}
	return r.Bind.Send(bufs, ep, offset)
}

// roamEndpoint is a received datagram's endpoint that reports its peer.
type roamEndpoint struct {
	*conn.StdNetEndpoint
	bind *roamingBind
}

func (e *roamEndpoint) FromPeer(pk [32]byte) { e.bind.authenticated(pk, e.AddrPort) }

func (e *roamEndpoint) InitiationMessagePublicKey(pk [32]byte) {
	e.bind.initiation(pk, e.AddrPort)
}

// authenticated runs on the receive path for every decrypted batch: cheap
// unless the endpoint changed, and then it only queues the change.
func (r *roamingBind) authenticated(pk [32]byte, from netip.AddrPort) {
	now := r.clock.Load()
	r.mu.Lock()
	st := r.peers[pk]
	if st != nil && st.ep == from {
		st.confirmed = now
		r.mu.Unlock()
		return
	}
	r.peers[pk] = &roamState{ep: from, confirmed: now}
	r.queue[pk] = from
	r.mu.Unlock()
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// initiation runs before the device answers an initiation, so it sets the
// endpoint synchronously (the handshake worker holds no device lock here).
//
// The fork reports the key before it looks the peer up, so pk may be any key
// an attacker made up: keys the device has no peer for only go to the
// bounded early table (never r.peers, never an IpcSet).
//
// An initiation from the endpoint the bind already holds is applied again
// (it is idempotent): the agent may have configured another endpoint since,
// and the reply must go where the initiation came from.
func (r *roamingBind) initiation(pk [32]byte, from netip.AddrPort) {
	r.mu.Lock()
	dev := r.dev
	r.mu.Unlock()
	if dev != nil && dev.LookupPeer(pk) == nil {
		r.rememberEarly(pk, from)
		return
	}
	r.mu.Lock()
	st := r.peers[pk]
	if st != nil && st.ep != from && st.confirmed != 0 && time.Now().Unix()-st.confirmed < int64(trustWindow/time.Second) {
		r.mu.Unlock()
		return
	}
	if st == nil || st.ep != from {
		r.peers[pk] = &roamState{ep: from} // not confirmed until a packet authenticates
	}
	r.mu.Unlock()
	r.set(dev, pk, from)
}

func (r *roamingBind) rememberEarly(pk [32]byte, from netip.AddrPort) {
	now := time.Now().Unix()
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.early[pk]; !ok && len(r.early) >= maxEarly {
		for k, e := range r.early { // drop what expired; if nothing did, forget this one
			if now-e.at >= int64(earlyWindow/time.Second) {
				delete(r.early, k)
			}
		}
		if len(r.early) >= maxEarly {
			return
		}
	}
	r.early[pk] = earlyInit{src: from, at: now}
}

// peekEarly reports where pk's latest initiation came from, if it did
// within earlyWindow.
func (r *roamingBind) peekEarly(pk [32]byte) (netip.AddrPort, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	e, ok := r.early[pk]
	if !ok || time.Now().Unix()-e.at >= int64(earlyWindow/time.Second) {
		return netip.AddrPort{}, false
	}
	return e.src, true
}

// takeEarly is peekEarly that also forgets the entry.
func (r *roamingBind) takeEarly(pk [32]byte) (netip.AddrPort, bool) {
	src, ok := r.peekEarly(pk)
	r.mu.Lock()
	delete(r.early, pk)
	r.mu.Unlock()
	return src, ok
}

// forget drops what the bind learned about keys whose endpoint the
// configuration just set or whose peer it removed.
func (r *roamingBind) forget(pks ...[32]byte) {
	if len(pks) == 0 {
		return
	}
	r.mu.Lock()
	for _, pk := range pks {
		delete(r.peers, pk)
		delete(r.queue, pk)
	}
	r.mu.Unlock()
}

func (r *roamingBind) forgetAll() {
	r.mu.Lock()
	r.peers = map[[32]byte]*roamState{}
	r.queue = map[[32]byte]netip.AddrPort{}
	r.mu.Unlock()
}

// adopt records that a new peer was pointed at src, the source of its
// early initiation: like an initiation, not confirmed until a packet
// authenticates.
func (r *roamingBind) adopt(pk [32]byte, src netip.AddrPort) {
	r.mu.Lock()
	r.peers[pk] = &roamState{ep: src}
	r.mu.Unlock()
}

func (r *roamingBind) worker() {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-r.done:
			return
		case now := <-tick.C:
			r.clock.Store(now.Unix())
			continue
		case <-r.kick:
		}
		r.mu.Lock()
		dev, q := r.dev, r.queue
		r.queue = map[[32]byte]netip.AddrPort{}
		r.mu.Unlock()
		for pk, ep := range q {
			r.set(dev, pk, ep)
		}
	}
}

// set points an existing peer at ep (update_only: a removed peer stays removed).
func (r *roamingBind) set(dev *device.Device, pk [32]byte, ep netip.AddrPort) {
	if dev == nil {
		return
	}
	err := dev.IpcSet(fmt.Sprintf("public_key=%s\nupdate_only=true\nendpoint=%s\n", hex.EncodeToString(pk[:]), ep))
	if err != nil {
		r.log.Warn("could not update a peer's endpoint", "endpoint", ep.String(), "err", err)
		return
	}
	r.log.Debug("peer endpoint learned", "endpoint", ep.String())
}
