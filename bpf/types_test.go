package bpf

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/weftmesh/weft/identity"
)

func TestPolicyKeyValidate(t *testing.T) {
	cases := []struct {
		key  PolicyKey
		want string // "" for valid
	}{
		{PolicyKey{Direction: Ingress, Identity: 256, Protocol: 6, Port: 80, PortPrefixLen: 16}, ""},
		{PolicyKey{Direction: Egress}, ""},
		{PolicyKey{Direction: Ingress, Protocol: 17, Port: 0x1f00, PortPrefixLen: 8}, ""},
		{PolicyKey{Direction: 2}, "direction"},
		{PolicyKey{PortPrefixLen: 17}, "prefix length"},
		{PolicyKey{Port: 0x1f01, PortPrefixLen: 8}, "beyond its 8-bit prefix"},
		{PolicyKey{Port: 80}, "beyond its 0-bit prefix"},
	}
	for _, c := range cases {
		err := c.key.Validate()
		if c.want == "" && err != nil {
			t.Errorf("%v: unexpected error %v", c.key, err)
		}
		if c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)) {
			t.Errorf("%v: error %v, want one mentioning %q", c.key, err, c.want)
		}
	}
}

func TestPolicyMapKeyRoundTrip(t *testing.T) {
	k := PolicyKey{Direction: Egress, Identity: 70000, Protocol: 6, Port: 0x1f00, PortPrefixLen: 8}
	mk := policyMapKey(7, k)
	if mk.Prefixlen != 8 || mk.EpId != 7 {
		t.Fatalf("map key %+v", mk)
	}
	// The port is big-endian in the map's memory.
	var buf bytes.Buffer
	must(t, binary.Write(&buf, binary.NativeEndian, mk))
	if b := buf.Bytes(); b[10] != 0x1f || b[11] != 0x00 {
		t.Fatalf("port bytes % x, want 1f 00", b[10:12])
	}
	if got := policyFromMapKey(mk); got != k {
		t.Fatalf("round trip %v, want %v", got, k)
	}
}

func TestConfigValidate(t *testing.T) {
	bad := []struct {
		cfg  Config
		want string
	}{
		{Config{}, "scope"},
		{Config{Scope: "a/b"}, "scope"},
		{Config{Scope: ".."}, "scope"},
		{Config{Scope: "n1", EventsBytes: 5000}, "power of two"},
		{Config{Scope: "n1", Timeouts: Timeouts{UDP: time.Millisecond}}, "udp timeout"},
		{Config{Scope: "n1", Attach: 7}, "attach mode"},
	}
	for _, c := range bad {
		err := c.cfg.withDefaults().validate()
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: error %v, want one mentioning %q", c.cfg, err, c.want)
		}
	}
	if err := (Config{Scope: "node-1"}).withDefaults().validate(); err != nil {
		t.Errorf("default config: %v", err)
	}
	if err := (Config{Ephemeral: true}).withDefaults().validate(); err != nil {
		t.Errorf("ephemeral config: %v", err)
	}
}

func TestPrefixKey(t *testing.T) {
	k, err := prefixKey(netip.MustParsePrefix("100.64.0.0/10"))
	must(t, err)
	if k.Prefixlen != 96+10 || k.Addr[10] != 0xff || k.Addr[12] != 100 {
		t.Errorf("IPv4 key %+v", k)
	}
	if _, err := prefixKey(netip.MustParsePrefix("100.64.0.1/10")); err == nil || !strings.Contains(err.Error(), "100.64.0.0/10") {
		t.Errorf("host bits: %v, want a hint with the masked prefix", err)
	}
}

func encodeEvent(t testing.TB, e datapathEvent) []byte {
	var buf bytes.Buffer
	if err := binary.Write(&buf, binary.NativeEndian, e); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestDecodeEvent(t *testing.T) {
	src := netip.MustParseAddr("100.64.1.2").As16()
	dst := netip.MustParseAddr("2001:db8::1").As16()
	raw := encodeEvent(t, datapathEvent{Ts: 5e9, EpId: 3, SrcIdentity: 1001, DstIdentity: 2, Type: 1, Reason: 2, Dir: 1,
		Proto: 6, Saddr: src, Daddr: dst, Sport: 1234, Dport: 80, Family: 4, Len: 60})
	boot := time.Unix(1000, 0)
	ev, err := decodeEvent(raw, boot)
	must(t, err)
	if ev.Type != EventDrop || ev.Reason != ReasonPolicyDeny || ev.Direction != Egress || ev.Src.String() != "100.64.1.2" ||
		ev.Dst.String() != "2001:db8::1" || ev.DstPort != 80 || !ev.Time.Equal(boot.Add(5*time.Second)) {
		t.Fatalf("decoded %v", ev)
	}
	if _, err := decodeEvent(raw[:10], boot); err == nil {
		t.Error("short record decoded")
	}
	raw[28] = 9 // type
	if _, err := decodeEvent(raw, boot); err == nil {
		t.Error("unknown event type decoded")
	}
}

func FuzzDecodeEvent(f *testing.F) {
	f.Add(encodeEvent(f, datapathEvent{Type: 2, Family: 6}))
	f.Add([]byte{1, 2, 3})
	f.Fuzz(func(t *testing.T, raw []byte) {
		ev, err := decodeEvent(raw, time.Unix(0, 0))
		if err != nil {
			return
		}
		if ev.Type != EventDrop && ev.Type != EventNewConn {
			t.Fatalf("accepted event type %d", ev.Type)
		}
		if ev.Direction > Egress {
			t.Fatalf("accepted direction %d", ev.Direction)
		}
		_ = ev.String()
	})
}

// TestHeaderIdentityPlan: the identity numbers the C programs test against
// are those of the number plan declared in identity (the loaded program's
// boundary is checked too, by an anti-spoofing case).
func TestHeaderIdentityPlan(t *testing.T) {
	src, err := os.ReadFile("lib/common.h")
	must(t, err)
	defines := map[string]uint64{}
	re := regexp.MustCompile(`(?m)^#define (IDENTITY_\w+) (.+)$`)
	for _, m := range re.FindAllStringSubmatch(string(src), -1) {
		v, err := parseCConst(m[2])
		if err != nil {
			t.Fatalf("%s: %v", m[1], err)
		}
		defines[m[1]] = v
	}
	for name, want := range map[string]identity.NumericIdentity{
		"IDENTITY_ANY": identity.IdentityAny, "IDENTITY_HOST": identity.IdentityHost,
		"IDENTITY_WORLD": identity.IdentityWorld, "IDENTITY_HEALTH": identity.IdentityHealth,
		"IDENTITY_REMOTE_NODE": identity.IdentityRemoteNode, "IDENTITY_ALLOCATED_MIN": identity.MinAllocated,
		"IDENTITY_CIDR_BASE": identity.CIDRIdentityBase,
	} {
		got, ok := defines[name]
		if !ok {
			t.Errorf("lib/common.h defines no %s", name)
		} else if got != uint64(want) {
			t.Errorf("lib/common.h: %s is %d, identity says %d", name, got, want)
		}
	}
}

// parseCConst evaluates the constant forms lib/common.h uses: a number, or
// (1U << n).
func parseCConst(s string) (uint64, error) {
	s = strings.TrimSpace(s)
	if i := strings.Index(s, "/*"); i >= 0 {
		s = strings.TrimSpace(s[:i])
	}
	if m := regexp.MustCompile(`^\((\d+)U? << (\d+)\)$`).FindStringSubmatch(s); m != nil {
		a, _ := strconv.ParseUint(m[1], 10, 64)
		b, _ := strconv.ParseUint(m[2], 10, 6)
		return a << b, nil
	}
	return strconv.ParseUint(strings.TrimSuffix(s, "U"), 0, 64)
}
