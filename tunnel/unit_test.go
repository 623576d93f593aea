package tunnel

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

func key(t testing.TB) wgtypes.Key {
	k, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k.PublicKey()
}

func TestMTUFor(t *testing.T) {
	for _, c := range []struct {
		under int
		v6    bool
		want  int
	}{{1500, true, 1420}, {1500, false, 1440}, {9000, true, 8920}} {
		got, err := MTUFor(c.under, c.v6)
		if err != nil || got != c.want {
			t.Errorf("MTUFor(%d, %v) = %d, %v; want %d", c.under, c.v6, got, err, c.want)
		}
	}
	if _, err := MTUFor(1300, true); !errors.Is(err, ErrBadMTU) {
		t.Errorf("MTUFor(1300) = %v; want ErrBadMTU", err)
	}
}

func TestKeyFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state", keyFile)
	k1, created, err := loadOrCreateKey(path)
	if err != nil || !created {
		t.Fatalf("first start: %v created=%v", err, created)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v, %v; want 0600", fi.Mode().Perm(), err)
	}
	k2, created, err := loadOrCreateKey(path)
	if err != nil || created || k2 != k1 {
		t.Fatalf("second start: got a different key or error %v", err)
	}
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := loadOrCreateKey(path); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("world-readable key accepted: %v", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := loadOrCreateKey(path); !errors.Is(err, ErrInvalidKey) {
		t.Fatalf("garbage key file: %v", err)
	}
}

func TestValidatePeers(t *testing.T) {
	self := key(t)
	k1, k2 := key(t), key(t)
	good := []Peer{
		{PublicKey: k1.String(), Endpoint: "198.18.1.10:51833", AllowedIPs: pfx("100.64.0.1/32", "10.1.0.0/24"), Keepalive: 25 * time.Second},
		{PublicKey: k2.String(), Endpoint: "[2001:db8::1]:51833", AllowedIPs: pfx("100.64.0.2/32")},
	}
	specs, err := validatePeers(good, self)
	if err != nil {
		t.Fatal(err)
	}
	if len(specs) != 2 || specs[0].allowed[0] != netip.MustParsePrefix("10.1.0.0/24") {
		t.Fatalf("specs %+v", specs)
	}
	bad := []struct {
		name string
		p    Peer
		want string
	}{
		{"key", Peer{PublicKey: "abc"}, "not a base64"},
		{"next key", Peer{PublicKey: k2.String(), NextPublicKey: "x"}, "next public key"},
		{"next = current", Peer{PublicKey: k2.String(), NextPublicKey: k2.String()}, "must differ"},
		{"duplicate", Peer{PublicKey: k1.String()}, "same public key as peer 0"},
		{"self", Peer{PublicKey: self.String()}, "own public key"},
		{"endpoint name", Peer{PublicKey: k2.String(), Endpoint: "node:51833"}, "not ip:port"},
		{"endpoint no port", Peer{PublicKey: k2.String(), Endpoint: "198.18.0.1"}, "not ip:port"},
		{"endpoint unspecified", Peer{PublicKey: k2.String(), Endpoint: "0.0.0.0:51833"}, "unicast"},
		{"keepalive", Peer{PublicKey: k2.String(), Keepalive: 1500 * time.Millisecond}, "whole seconds"},
		{"overlap", Peer{PublicKey: k2.String(), AllowedIPs: pfx("10.1.0.128/25")}, "overlaps 10.1.0.0/24 of peer 0"},
		{"host bits", Peer{PublicKey: k2.String(), AllowedIPs: pfx("100.64.0.9/24")}, "did you mean 100.64.0.0/24"},
		{"default route", Peer{PublicKey: k2.String(), AllowedIPs: pfx("0.0.0.0/0")}, "everything"},
	}
	for _, c := range bad {
		_, err := validatePeers([]Peer{good[0], c.p}, self)
		if !errors.Is(err, ErrInvalidPeer) || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "peer 1") {
			t.Errorf("%s: %v; want ErrInvalidPeer naming peer 1 and %q", c.name, err, c.want)
		}
	}
}

func ipnet(s string) net.IPNet {
	_, n, _ := net.ParseCIDR(s)
	return *n
}

// TestPlan covers the pure difference computation: additions, updates,
// removals, roaming endpoints and rotation ownership.
func TestPlan(t *testing.T) {
	k1, k2, k3 := key(t), key(t), key(t)
	desired := []peerSpec{
		{key: k1, endpoint: netip.MustParseAddrPort("198.18.1.10:51833"), allowed: pfx("100.64.0.1/32")},
		{key: k2, allowed: pfx("100.64.0.2/32"), keep: 25 * time.Second},
	}
	empty := &wgtypes.Device{}
	p := makePlan(empty, nil, desired, nil)
	if len(p.peers) != 2 || len(p.addRoutes) != 2 || len(p.delRoutes) != 0 {
		t.Fatalf("plan from empty: %+v", p)
	}
	// The device as the plan left it, with k1 roamed to a new endpoint and
	// a stranger k3 plus a stale route.
	dev := &wgtypes.Device{Peers: []wgtypes.Peer{
		{PublicKey: k1, Endpoint: net.UDPAddrFromAddrPort(netip.MustParseAddrPort("198.18.7.7:40000")), AllowedIPs: []net.IPNet{ipnet("100.64.0.1/32")}},
		{PublicKey: k2, AllowedIPs: []net.IPNet{ipnet("100.64.0.2/32")}, PersistentKeepaliveInterval: 25 * time.Second},
		{PublicKey: k3, AllowedIPs: []net.IPNet{ipnet("100.64.0.3/32")}},
	}}
	routes := pfx("100.64.0.1/32", "100.64.0.2/32", "100.64.0.3/32")
	p = makePlan(dev, routes, desired, p.endpoints)
	if len(p.peers) != 1 || !p.peers[0].Remove || p.peers[0].PublicKey != k3 {
		t.Fatalf("want only k3 removed (k1 roamed: left alone); got %+v", p.peers)
	}
	if len(p.delRoutes) != 1 || p.delRoutes[0] != netip.MustParsePrefix("100.64.0.3/32") || len(p.addRoutes) != 0 {
		t.Fatalf("routes: add %v del %v", p.addRoutes, p.delRoutes)
	}
	// A configured endpoint that changes is applied even though k1 roamed.
	moved := append([]peerSpec(nil), desired...)
	moved[0].endpoint = netip.MustParseAddrPort("198.18.1.20:51833")
	p = makePlan(dev, routes[:2], moved, map[wgtypes.Key]netip.AddrPort{k1: desired[0].endpoint})
	if len(p.peers) != 2 || p.peers[0].Endpoint == nil || p.peers[0].Endpoint.String() != "198.18.1.20:51833" {
		t.Fatalf("endpoint change not applied: %+v", p.peers)
	}

	// Rotation: k2 announces k3. Before k3 handshakes, k2 keeps the prefix.
	rot := []peerSpec{{key: k2, next: &k3, allowed: pfx("100.64.0.2/32")}}
	dev = &wgtypes.Device{Peers: []wgtypes.Peer{{PublicKey: k2, AllowedIPs: []net.IPNet{ipnet("100.64.0.2/32")}, LastHandshakeTime: time.Unix(100, 0)}}}
	p = makePlan(dev, pfx("100.64.0.2/32"), rot, nil)
	if len(p.peers) != 1 || p.peers[0].PublicKey != k3 || len(p.peers[0].AllowedIPs) != 0 {
		t.Fatalf("next key entry: %+v", p.peers)
	}
	dev.Peers = append(dev.Peers, wgtypes.Peer{PublicKey: k3, LastHandshakeTime: time.Unix(200, 0)})
	p = makePlan(dev, pfx("100.64.0.2/32"), rot, nil)
	if len(p.peers) != 2 || p.peers[0].PublicKey != k2 || len(p.peers[0].AllowedIPs) != 0 ||
		p.peers[1].PublicKey != k3 || len(p.peers[1].AllowedIPs) != 1 || len(p.addRoutes)+len(p.delRoutes) != 0 {
		t.Fatalf("prefix did not move to the new key: %+v", p)
	}
}

// FuzzValidatePeers: arbitrary keys, endpoints and prefixes never panic,
// and whatever is accepted has no overlapping prefixes between peers.
func FuzzValidatePeers(f *testing.F) {
	f.Add("YQ==", "198.18.0.1:51833", "100.64.0.0/24", "100.64.0.1/32", int64(25))
	f.Add("", "[::1]:1", "::/1", "8000::/1", int64(-1))
	self, _ := wgtypes.GeneratePrivateKey()
	k1, _ := wgtypes.GeneratePrivateKey()
	f.Fuzz(func(t *testing.T, k, ep, p1, p2 string, keep int64) {
		a, errA := netip.ParsePrefix(p1)
		b, errB := netip.ParsePrefix(p2)
		if errA != nil || errB != nil {
			return
		}
		peers := []Peer{
			{PublicKey: k1.PublicKey().String(), AllowedIPs: []netip.Prefix{a}},
			{PublicKey: k, Endpoint: ep, AllowedIPs: []netip.Prefix{b}, Keepalive: time.Duration(keep) * time.Second},
		}
		specs, err := validatePeers(peers, self.PublicKey())
		if err != nil {
			if !errors.Is(err, ErrInvalidPeer) {
				t.Fatalf("error without ErrInvalidPeer: %v", err)
			}
			return
		}
		if specs[0].allowed[0].Overlaps(specs[1].allowed[0]) {
			t.Fatalf("accepted overlapping prefixes %v and %v", a, b)
		}
	})
}

// TestPathOverheadLeavesRoomForARelayHeader: the derived MTU leaves room for
// what a path adds; a nonsensical overhead is refused.
func TestPathOverheadLeavesRoomForARelayHeader(t *testing.T) {
	c := Config{StateDir: t.TempDir(), Mode: ModeKernel, PathOverhead: -1}
	if err := c.validate(); !errors.Is(err, ErrBadConfig) {
		t.Fatalf("overhead -1: %v", err)
	}
	tn := &Tunnel{cfg: Config{UnderlayMTU: 1500, IPv4Underlay: true, PathOverhead: 12}}
	if err := tn.setMTU(); err != nil || tn.mtu != 1428 {
		t.Fatalf("MTU %d (%v), want 1500 - 60 - 12 = 1428", tn.mtu, err)
	}
}
