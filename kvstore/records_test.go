package kvstore

import (
	"encoding/base64"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"
)

var testKey = base64.StdEncoding.EncodeToString(make([]byte, 32))

func validNode() Node {
	return Node{
		Name: "vm-1", Cluster: "east",
		Endpoints:   []netip.AddrPort{netip.MustParseAddrPort("198.18.0.2:51833")},
		WGPublicKey: testKey,
		CIDRs:       []netip.Prefix{netip.MustParsePrefix("100.64.1.0/24")},
		MeshIP:      netip.MustParseAddr("100.64.1.1"),
		Labels:      []string{"vm:app=web", "mesh:cluster=east"},
	}
}

func TestRecordsRoundTrip(t *testing.T) {
	n := validNode()
	data, err := Encode(&n)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(data), `"version":1`) {
		t.Fatalf("encoded node has no version: %s", data)
	}
	got, err := DecodeNode(data)
	if err != nil {
		t.Fatal(err)
	}
	if got.Name != n.Name || got.MeshIP != n.MeshIP || got.CIDRs[0] != n.CIDRs[0] || got.Endpoints[0] != n.Endpoints[0] {
		t.Fatalf("round trip changed the node: %+v", got)
	}
}

// TestNodeNextKey: the next key of a rotation survives a round trip, and a
// node that is not rotating writes no such field, so agents that predate
// rotation read its record unchanged.
func TestNodeNextKey(t *testing.T) {
	n := validNode()
	data, err := Encode(&n)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(data), "wgNextPublicKey") {
		t.Fatalf("a node that is not rotating writes wgNextPublicKey: %s", data)
	}
	next := make([]byte, 32)
	next[0] = 1
	n.WGNextPublicKey = base64.StdEncoding.EncodeToString(next)
	if data, err = Encode(&n); err != nil {
		t.Fatal(err)
	}
	got, err := DecodeNode(data)
	if err != nil {
		t.Fatal(err)
	}
	if got.WGNextPublicKey != n.WGNextPublicKey || got.WGPublicKey != n.WGPublicKey {
		t.Fatalf("round trip changed the keys: %+v", got)
	}
}

func TestDecodeRefuses(t *testing.T) {
	for _, tc := range []struct {
		name, data string
		want       error
		msg        string
	}{
		{"newer version", `{"version":2,"name":"a"}`, ErrUnsupportedVersion, "version 2"},
		{"no version", `{"name":"vm-1"}`, ErrInvalidRecord, `no "version" field`},
		{"not json", `garbage`, ErrInvalidRecord, "not valid JSON"},
		{"bad key", `{"version":1,"name":"vm-1","cluster":"east","wgPublicKey":"abc"}`, ErrInvalidRecord, "wgPublicKey"},
		{"upper-case name", `{"version":1,"name":"VM","cluster":"east","wgPublicKey":"` + testKey + `"}`, ErrInvalidRecord, `"VM"`},
		{"host bits", `{"version":1,"name":"a","cluster":"east","wgPublicKey":"` + testKey + `","cidrs":["100.64.1.1/24"]}`, ErrInvalidRecord, "did you mean 100.64.1.0/24"},
		{"port zero", `{"version":1,"name":"a","cluster":"east","wgPublicKey":"` + testKey + `","endpoints":["198.18.0.1:0"]}`, ErrInvalidRecord, "non-zero port"},
		{"bad label", `{"version":1,"name":"a","cluster":"east","wgPublicKey":"` + testKey + `","labels":["app"]}`, ErrInvalidRecord, "source:key=value"},
		{"bad next key", `{"version":1,"name":"a","cluster":"east","wgPublicKey":"` + testKey + `","wgNextPublicKey":"abc"}`, ErrInvalidRecord, "wgNextPublicKey"},
		{"next key equals current", `{"version":1,"name":"a","cluster":"east","wgPublicKey":"` + testKey + `","wgNextPublicKey":"` + testKey + `"}`, ErrInvalidRecord, "equals wgPublicKey"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := DecodeNode([]byte(tc.data))
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("DecodeNode(%s) = %v, want %v mentioning %q", tc.data, err, tc.want, tc.msg)
			}
		})
	}
}

func TestClusterValidate(t *testing.T) {
	ok := Cluster{Name: "east", ID: 1, MeshPool: netip.MustParsePrefix("100.64.0.0/16"),
		PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.1.0.0/16")}}
	if err := ok.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		mod  func(*Cluster)
		msg  string
	}{
		{"id 0", func(c *Cluster) { c.ID = 0 }, "1..4095"},
		{"id 4096", func(c *Cluster) { c.ID = 4096 }, "1..4095"},
		{"pool outside mesh range", func(c *Cluster) { c.MeshPool = netip.MustParsePrefix("10.0.0.0/16") }, "outside the mesh range"},
		{"pool larger than range", func(c *Cluster) { c.MeshPool = netip.MustParsePrefix("100.0.0.0/8") }, "outside the mesh range"},
		{"pod overlaps pool", func(c *Cluster) { c.PodCIDRs = []netip.Prefix{netip.MustParsePrefix("100.64.3.0/24")} }, "overlaps"},
		{"no pool", func(c *Cluster) { c.MeshPool = netip.Prefix{} }, "meshPool"},
		{"bad name", func(c *Cluster) { c.Name = "a/b" }, "not allowed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := ok
			tc.mod(&c)
			err := c.Validate()
			if err == nil || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("Validate = %v, want error mentioning %q", err, tc.msg)
			}
		})
	}
}

func TestTokenValidate(t *testing.T) {
	tok := Token{ID: "t1", SecretSHA256: strings.Repeat("ab", 32), Cluster: "east", Expires: time.Now(), MaxUses: 1}
	if err := tok.Validate(); err != nil {
		t.Fatal(err)
	}
	tok.Uses = 2
	if err := tok.Validate(); err == nil {
		t.Fatal("uses above maxUses accepted")
	}
}

func TestParseKey(t *testing.T) {
	good := map[string]ParsedKey{
		NodeKey("east", "vm-1"):                                     {Kind: "nodes", Cluster: "east", Node: "vm-1", Name: "vm-1"},
		IPAMKey("east", netip.MustParsePrefix("100.64.3.0/24")):     {Kind: "ipam", Cluster: "east", CIDR: netip.MustParsePrefix("100.64.3.0/24")},
		IdentityRefKey("east", "vm-1", 300):                         {Kind: "identities/refs", Cluster: "east", Node: "vm-1", ID: 300},
		IdentityIDKey(256):                                          {Kind: "identities/id", ID: 256},
		EndpointKey("east", "vm-1", netip.MustParseAddr("fd00::1")): {Kind: "endpoints", Cluster: "east", Node: "vm-1", IP: netip.MustParseAddr("fd00::1")},
		PolicyKey("db"):                                             {Kind: "policies", Name: "db"},
		TokenKey("t12"):                                             {Kind: "tokens", Name: "t12"},
		ClusterKey("east"):                                          {Kind: "clusters", Cluster: "east", Name: "east"},
		GossipKeyKey:                                                {Kind: "mesh/gossip-key"},
		RevokedKey("east", "vm-1"):                                  {Kind: "revoked", Cluster: "east", Node: "vm-1", Name: "vm-1"},
	}
	for key, want := range good {
		got, err := ParseKey(key)
		if err != nil || got != want {
			t.Errorf("ParseKey(%q) = %+v, %v; want %+v", key, got, err, want)
		}
	}
	for _, key := range []string{
		"other/v1/nodes/a/b", Prefix + "nodes/a", Prefix + "nodes/A/b", Prefix + "ipam/a/100.64.3.1/24",
		Prefix + "identities/id/0256", Prefix + "identities/labels/xyz", Prefix + "endpoints/a/b/01.2.3.4",
		Prefix + "widgets/x", Prefix + "identities/refs/a/b", Prefix + "policies/a/b",
		Prefix + "mesh/other", Prefix + "mesh/gossip-key/x", Prefix + "mesh",
	} {
		if _, err := ParseKey(key); !errors.Is(err, ErrInvalidKey) {
			t.Errorf("ParseKey(%q) = %v, want ErrInvalidKey", key, err)
		}
	}
}

func TestFirstFree(t *testing.T) {
	pool := netip.MustParsePrefix("100.64.0.0/22")
	p := func(s string) netip.Prefix { return netip.MustParsePrefix(s) }
	got, ok := firstFree(pool, 24, []netip.Prefix{p("100.64.0.0/24"), p("100.64.1.128/25")})
	if !ok || got != p("100.64.2.0/24") {
		t.Fatalf("firstFree = %v %v, want 100.64.2.0/24", got, ok)
	}
	if _, ok := firstFree(pool, 23, []netip.Prefix{p("100.64.0.0/23"), p("100.64.2.0/23")}); ok {
		t.Fatal("full pool reported a free /23")
	}
	got, ok = firstFree(p("fd00::/120"), 124, []netip.Prefix{p("fd00::/124")})
	if !ok || got != p("fd00::10/124") {
		t.Fatalf("IPv6 firstFree = %v %v, want fd00::10/124", got, ok)
	}
	if _, ok := nextPrefix(p("255.255.255.0/24")); ok {
		t.Fatal("nextPrefix past the end of IPv4 space succeeded")
	}
}

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		cfg Config
		msg string
	}{
		{Config{}, "no etcd endpoints"},
		{Config{Endpoints: []string{"127.0.0.1:2379"}}, "must start with https://"},
		{Config{Endpoints: []string{"https://127.0.0.1:2379"}}, "no CA file"},
		{Config{Endpoints: []string{"http://127.0.0.1:2379"}, CAFile: "ca"}, "plaintext"},
		{Config{Endpoints: []string{"https://h:1"}, CAFile: "ca", CertFile: "c"}, "together"},
		{Config{Endpoints: []string{"http://h:1"}, Username: "u"}, "together"},
	} {
		err := tc.cfg.Validate()
		if !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("Validate(%+v) = %v, want ErrInvalidConfig mentioning %q", tc.cfg, err, tc.msg)
		}
	}
}

// FuzzDecodeRecords feeds arbitrary bytes to every decoder: none may panic,
// and whatever decodes must validate and re-encode to something that
// decodes to the same JSON.
func FuzzDecodeRecords(f *testing.F) {
	n := validNode()
	data, _ := Encode(&n)
	f.Add(data)
	f.Add([]byte(`{"version":1,"name":"east","id":3,"meshPool":"100.64.0.0/16","podCIDRs":["10.0.0.0/8"]}`))
	f.Add([]byte(`{"version":1,"id":256,"labels":["k8s:app=db"]}`))
	f.Add([]byte(`{"version":1,"id":"t1","secretSHA256":"` + strings.Repeat("0", 64) + `","cluster":"a","expires":"2030-01-01T00:00:00Z","maxUses":2}`))
	f.Add([]byte(`{"version":1,"ip":"100.64.1.2","identity":300,"cluster":"a","node":"b"}`))
	f.Add([]byte(`{"version":1,"name":"p","format":"yaml","document":"kind: Policy"}`))
	f.Add([]byte(`{"version":2}`))
	f.Add([]byte(`{"version":1,"name":"west","id":2,"meshPool":"100.65.0.0/16","mode":"mirror"}`))
	f.Add([]byte(`{"version":1,"name":"west","id":2,"meshPool":"100.65.0.0/16","mode":"direct","direct":{"etcdEndpoints":["https://198.18.0.1:2379"],"caCert":"x","cert":"y","key":"z"}}`))
	f.Add([]byte(`{"version":1,"cluster":"west","clusterID":2,"synced":true,"updated":"2030-01-01T00:00:00Z","counts":{"nodes":1}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		check := func(rec Record, err error) {
			if err != nil {
				if !errors.Is(err, ErrInvalidRecord) && !errors.Is(err, ErrUnsupportedVersion) && !errors.Is(err, ErrInvalidKey) {
					t.Fatalf("decode error without a kvstore sentinel: %v", err)
				}
				return
			}
			if err := rec.Validate(); err != nil {
				t.Fatalf("decoded record does not validate: %v", err)
			}
			if _, err := Encode(rec); err != nil {
				t.Fatalf("decoded record does not encode: %v", err)
			}
		}
		c, err := DecodeCluster(data)
		check(&c, err)
		nd, err := DecodeNode(data)
		check(&nd, err)
		a, err := DecodeIPAM(data)
		check(&a, err)
		i, err := DecodeIdentity(data)
		check(&i, err)
		in, err := DecodeIdentityNumber(data)
		check(&in, err)
		r, err := DecodeIdentityRef(data)
		check(&r, err)
		e, err := DecodeEndpoint(data)
		check(&e, err)
		p, err := DecodePolicy(data)
		check(&p, err)
		tk, err := DecodeToken(data)
		check(&tk, err)
		rc, err := DecodeRemoteCluster(data)
		check(&rc, err)
		rv, err := decode[RemoteClusterView](data)
		check(&rv, err)
		ms, err := DecodeMirrorStatus(data)
		check(&ms, err)
	})
}

// FuzzParseKey checks that ParseKey never panics and that what it accepts
// is rebuilt to the same key by the key builders.
func FuzzParseKey(f *testing.F) {
	for _, k := range []string{NodeKey("a", "b"), IPAMKey("a", netip.MustParsePrefix("100.64.0.0/24")), IdentityIDKey(300),
		IdentityRefKey("a", "b", 7), EndpointKey("a", "b", netip.MustParseAddr("100.64.0.1")), PolicyKey("p"), TokenKey("t"), ClusterKey("c"),
		IdentityLabelsKey(strings.Repeat("a", 64)), GossipKeyKey} {
		f.Add(k)
	}
	f.Fuzz(func(t *testing.T, key string) {
		p, err := ParseKey(key)
		if err != nil {
			return
		}
		var rebuilt string
		switch p.Kind {
		case "clusters":
			rebuilt = ClusterKey(p.Cluster)
		case "nodes":
			rebuilt = NodeKey(p.Cluster, p.Node)
		case "ipam":
			rebuilt = IPAMKey(p.Cluster, p.CIDR)
		case "identities/id":
			rebuilt = IdentityIDKey(p.ID)
		case "identities/labels":
			rebuilt = IdentityLabelsKey(p.Hash)
		case "identities/refs":
			rebuilt = IdentityRefKey(p.Cluster, p.Node, p.ID)
		case "endpoints":
			rebuilt = EndpointKey(p.Cluster, p.Node, p.IP)
		case "policies":
			rebuilt = PolicyKey(p.Name)
		case "tokens":
			rebuilt = TokenKey(p.Name)
		case "mesh/gossip-key":
			rebuilt = GossipKeyKey
		default:
			t.Fatalf("unknown kind %q", p.Kind)
		}
		if rebuilt != key {
			t.Fatalf("ParseKey(%q) = %+v rebuilds as %q", key, p, rebuilt)
		}
	})
}

// TestNodeNATFields: reflexive addresses, the symmetric-NAT flag and the
// relay address round-trip; loopback, port 0 and too many are refused.
func TestNodeNATFields(t *testing.T) {
	n := validNode()
	n.Reflexive = []netip.AddrPort{netip.MustParseAddrPort("198.19.0.4:40001")}
	n.SymmetricNAT = true
	n.Relay = netip.MustParseAddrPort("198.18.1.10:51838")
	data, err := Encode(&n)
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecodeNode(data)
	if err != nil || len(got.Reflexive) != 1 || got.Reflexive[0] != n.Reflexive[0] || !got.SymmetricNAT || got.Relay != n.Relay {
		t.Fatalf("round trip: %+v, %v", got, err)
	}
	for name, bad := range map[string]func(*Node){
		"loopback reflexive": func(n *Node) { n.Reflexive = []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:51833")} },
		"port 0 reflexive":   func(n *Node) { n.Reflexive = []netip.AddrPort{netip.MustParseAddrPort("198.19.0.4:0")} },
		"five reflexive": func(n *Node) {
			for i := range 5 {
				n.Reflexive = append(n.Reflexive, netip.AddrPortFrom(netip.MustParseAddr("198.19.0.4"), uint16(1000+i)))
			}
		},
		"loopback relay": func(n *Node) { n.Relay = netip.MustParseAddrPort("127.0.0.1:51838") },
	} {
		b := validNode()
		bad(&b)
		if err := b.Validate(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
