package tunnel

import (
	"log/slog"
	"net/netip"
	"testing"
	"time"

	"github.com/tailscale/wireguard-go/conn"
	"github.com/tailscale/wireguard-go/device"
	"github.com/tailscale/wireguard-go/tun/tuntest"
)

// TestRoamingTrust: which source a peer's endpoint follows. Authenticated
// packets always move it; an unverified handshake initiation moves it only
// when no authenticated packet vouched for the current one recently.
func TestRoamingTrust(t *testing.T) {
	r := newRoamingBind(nil, slog.New(slog.DiscardHandler)) // no device: decisions only
	t.Cleanup(r.stop)
	var pk [32]byte
	pk[0] = 1
	x := netip.MustParseAddrPort("198.18.5.1:51833")
	y := netip.MustParseAddrPort("198.18.5.2:40000")
	z := netip.MustParseAddrPort("198.18.5.3:40001")
	ep := func() netip.AddrPort {
		r.mu.Lock()
		defer r.mu.Unlock()
		return r.peers[pk].ep
	}

	r.initiation(pk, x) // first contact of a NAT'd peer: the reply needs x
	if got := ep(); got != x {
		t.Fatalf("after first initiation from %s: endpoint %s", x, got)
	}
	r.authenticated(pk, x)
	r.initiation(pk, y) // forged or replayed initiation while x is vouched for
	if got := ep(); got != x {
		t.Fatalf("unverified initiation from %s moved a confirmed endpoint to %s", y, got)
	}
	r.authenticated(pk, y) // the peer really roamed
	if got := ep(); got != y {
		t.Fatalf("authenticated packet from %s: endpoint %s", y, got)
	}
	r.mu.Lock()
	if q, ok := r.queue[pk]; !ok || q != y {
		t.Errorf("roam to %s not queued for the device (queue %v)", y, r.queue)
	}
	r.peers[pk].confirmed = time.Now().Add(-trustWindow - time.Second).Unix() // silent for a session lifetime
	r.mu.Unlock()
	r.initiation(pk, z)
	if got := ep(); got != z {
		t.Fatalf("initiation from %s after %v of silence: endpoint %s", z, trustWindow, got)
	}
}

// TestRoamingIgnoresUnknownKeys: the fork reports an initiation's key before
// it checks that a peer has it; made-up keys must leave no state behind.
func TestRoamingIgnoresUnknownKeys(t *testing.T) {
	r := newRoamingBind(nil, slog.New(slog.DiscardHandler))
	dev := device.NewDevice(tuntest.NewChannelTUN().TUN(), conn.NewDefaultBind(), device.NewLogger(device.LogLevelSilent, ""))
	t.Cleanup(dev.Close)
	r.attach(dev)
	t.Cleanup(r.stop)
	for i := range 100 {
		var pk [32]byte
		pk[0], pk[1] = 2, byte(i)
		r.initiation(pk, netip.MustParseAddrPort("198.18.5.1:51833"))
	}
	r.mu.Lock()
	n := len(r.peers)
	r.mu.Unlock()
	if n != 0 {
		t.Fatalf("initiations with keys of no peer left %d peer states", n)
	}
}
