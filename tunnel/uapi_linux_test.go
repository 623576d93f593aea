package tunnel

import (
	"bufio"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"testing"

	"github.com/tailscale/wireguard-go/conn"
	"github.com/tailscale/wireguard-go/device"
	"github.com/tailscale/wireguard-go/tun/tuntest"
)

func newUAPITestDevice(t *testing.T) (*device.Device, *roamingBind) {
	t.Helper()
	r := newRoamingBind(conn.NewDefaultBind(), slog.New(slog.DiscardHandler))
	dev := device.NewDevice(tuntest.NewChannelTUN().TUN(), r, device.NewLogger(device.LogLevelSilent, ""))
	t.Cleanup(dev.Close)
	r.attach(dev)
	t.Cleanup(r.stop)
	return dev, r
}

func testKey(b byte) [32]byte {
	var pk [32]byte
	pk[0], pk[31] = b, 0x40 // any 32 bytes are a public key to the device
	return pk
}

func uapiApply(t *testing.T, dev *device.Device, r *roamingBind, lines ...string) {
	t.Helper()
	op := strings.Join(lines, "\n") + "\n\n"
	if err := uapiSet(bufio.NewReader(strings.NewReader(op)), dev, r); err != nil {
		t.Fatalf("set %q: %v", op, err)
	}
}

// deviceEndpoint reads a peer's endpoint as `wg show` would.
func deviceEndpoint(t *testing.T, dev *device.Device, pk [32]byte) string {
	t.Helper()
	get, err := dev.IpcGet()
	if err != nil {
		t.Fatal(err)
	}
	var in bool
	for _, l := range strings.Split(get, "\n") {
		k, v, _ := strings.Cut(l, "=")
		switch {
		case k == "public_key":
			in = v == hex.EncodeToString(pk[:])
		case in && k == "endpoint":
			return v
		}
	}
	return ""
}

// TestUAPIEarlyInitiation: a node's initiation that arrived before its peer
// existed decides where the peer added moments later is reached, with or
// without a configured endpoint; without one, the configuration stands.
func TestUAPIEarlyInitiation(t *testing.T) {
	dev, r := newUAPITestDevice(t)
	nat := netip.MustParseAddrPort("198.18.9.1:40001")
	lan := "10.1.0.5:51833"

	a, b, c := testKey(1), testKey(2), testKey(3)
	r.initiation(a, nat) // no peer for a yet: remembered, nothing else
	r.mu.Lock()
	if len(r.peers) != 0 || r.early[a].src != nat {
		t.Fatalf("initiation of an unknown key: peers %v early %v", r.peers, r.early)
	}
	r.mu.Unlock()
	r.initiation(b, nat)
	uapiApply(t, dev, r,
		"public_key="+hex.EncodeToString(a[:]), "endpoint="+lan, "persistent_keepalive_interval=5",
		"public_key="+hex.EncodeToString(b[:]), "persistent_keepalive_interval=5",
		"public_key="+hex.EncodeToString(c[:]), "endpoint="+lan)
	if got := deviceEndpoint(t, dev, a); got != nat.String() {
		t.Errorf("peer a (configured %s, initiated from %s): endpoint %q", lan, nat, got)
	}
	if got := deviceEndpoint(t, dev, b); got != nat.String() {
		t.Errorf("peer b (no endpoint configured, initiated from %s): endpoint %q", nat, got)
	}
	if got := deviceEndpoint(t, dev, c); got != lan {
		t.Errorf("peer c (no early initiation): endpoint %q, want the configured %s", got, lan)
	}
	r.mu.Lock()
	if len(r.early) != 0 {
		t.Errorf("early initiations not consumed by the peers they made: %v", r.early)
	}
	if st := r.peers[a]; st == nil || st.ep != nat || st.confirmed != 0 {
		t.Errorf("bind state of a: %+v; want %s, unconfirmed", st, nat)
	}
	r.mu.Unlock()

	// An existing peer's configured endpoint is the configuration's
	// business: an early entry (there is none for an existing peer) never
	// rewrites it.
	uapiApply(t, dev, r, "public_key="+hex.EncodeToString(c[:]), "update_only=true", "endpoint=10.1.0.6:51833")
	if got := deviceEndpoint(t, dev, c); got != "10.1.0.6:51833" {
		t.Errorf("reconfigured c: endpoint %q", got)
	}
}

// TestUAPIRejoinForgetsRoamState: a NAT'd node that left (its peer removed)
// and joined again (added back at its configured address) is answered at
// the address its new initiations come from, even though the bind had
// confirmed that same address before it left. This was the "rejoined node
// never handshakes" defect: the bind's stale state said the device already
// pointed there.
func TestUAPIRejoinForgetsRoamState(t *testing.T) {
	dev, r := newUAPITestDevice(t)
	nat := netip.MustParseAddrPort("198.18.9.1:51833")
	lan := "10.1.0.5:51833"
	k := testKey(7)
	hk := hex.EncodeToString(k[:])

	uapiApply(t, dev, r, "public_key="+hk, "endpoint="+lan)
	r.initiation(k, nat)
	r.authenticated(k, nat) // the session ran from behind the NAT
	if got := deviceEndpoint(t, dev, k); got != nat.String() {
		t.Fatalf("first join: endpoint %q, want %s", got, nat)
	}
	uapiApply(t, dev, r, "public_key="+hk, "remove=true") // the node left
	uapiApply(t, dev, r, "public_key="+hk, "endpoint="+lan)
	if got := deviceEndpoint(t, dev, k); got != lan {
		t.Fatalf("re-added peer: endpoint %q, want the configured %s", got, lan)
	}
	r.initiation(k, nat) // its first initiation after joining again
	if got := deviceEndpoint(t, dev, k); got != nat.String() {
		t.Fatalf("rejoined node's initiation from %s: device answers at %q", nat, got)
	}

	// The same for a configuration that moves an existing peer's endpoint:
	// the next initiation from the confirmed address is applied again.
	r.authenticated(k, nat)
	uapiApply(t, dev, r, "public_key="+hk, "update_only=true", "endpoint="+lan)
	r.initiation(k, nat)
	if got := deviceEndpoint(t, dev, k); got != nat.String() {
		t.Fatalf("after a configured endpoint, initiation from %s: device answers at %q", nat, got)
	}
}

// TestEarlyInitiationsBounded: initiations with made-up keys fill at most
// maxEarly entries; nothing reaches r.peers or the device.
func TestEarlyInitiationsBounded(t *testing.T) {
	dev, r := newUAPITestDevice(t)
	for i := range maxEarly + 500 {
		var pk [32]byte
		copy(pk[:], fmt.Sprintf("%032d", i))
		r.initiation(pk, netip.MustParseAddrPort("198.18.9.1:51833"))
	}
	r.mu.Lock()
	n, p := len(r.early), len(r.peers)
	r.mu.Unlock()
	if n > maxEarly || p != 0 {
		t.Fatalf("early %d (max %d), peers %d", n, maxEarly, p)
	}
	if get, _ := dev.IpcGet(); strings.Contains(get, "public_key=") {
		t.Fatalf("made-up keys created peers:\n%s", get)
	}
}
