package e2e

import (
	"context"
	"fmt"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/weftmesh/weft/internal/lab"
	"github.com/weftmesh/weft/internal/testutil"
)

// TestNATRejoin: a node behind NAT leaves the mesh and joins it again (leave
// removes its WireGuard key, so with a new one), then goes down and comes
// back with `join` (same key, after its peers dropped it); each time it is
// reachable from the public nodes, and reaches them, as on its first join.
// Before the fix the public nodes' helpers remembered the NAT'd node's old
// session and answered its new initiations at the LAN address of its
// record: every peer showed handshake "never".
func TestNATRejoin(t *testing.T) {
	m := NewMesh(t, &lab.Spec{Sites: []lab.SiteSpec{
		{Name: "site1", Nodes: []lab.NodeSpec{{Name: "seed"}}},
		{Name: "site2", Nodes: []lab.NodeSpec{{Name: "pub"}}},
		{Name: "site3", NAT: true, Nodes: []lab.NodeSpec{{Name: "nat"}}},
	}})
	m.Up("seed")
	m.Join("pub", "")
	n := m.Join("nat", "")
	ips := map[string]string{}
	var natCIDR string
	for _, name := range []string{"seed", "pub", "nat"} {
		var st statusJSON
		m.JSON(name, &st, "status")
		ips[name] = st.MeshIP
		if name == "nat" {
			natCIDR = st.CIDRs[0]
		}
	}
	allPairs := func(what string) {
		t.Helper()
		for _, from := range []string{"seed", "pub", "nat"} {
			for _, to := range []string{"seed", "pub", "nat"} {
				if from == to {
					continue
				}
				// Bounded well below the 180 s the defect lasted, well
				// above a handshake.
				testutil.Eventually(t, 15*time.Second, fmt.Sprintf("%s: %s pings %s", what, from, to), func() error {
					return pingFromNode(m, from, ips[to])
				})
			}
		}
	}
	allPairs("first join")

	m.MustMeshctl("nat", "leave")
	select {
	case <-n.Proc.Done():
	case <-time.After(30 * time.Second):
		t.Fatal("meshctl join --foreground on nat did not end after leave")
	}
	testutil.Eventually(t, 20*time.Second, "peers drop nat", func() error {
		if err := noPeer(m, "seed", "nat", natCIDR); err != nil {
			return err
		}
		return noPeer(m, "pub", "nat", natCIDR)
	})

	p, err := m.startJoin(n, m.Token, "")
	if err != nil {
		t.Fatal(err)
	}
	n.Proc = p
	m.waitOutput(p, regexp.MustCompile(`(?i)agent .*(ready|running)|Joined the mesh`), 60*time.Second, "meshctl join on nat, again")
	m.WaitHealthy("nat")
	var st statusJSON
	m.JSON("nat", &st, "status")
	ips["nat"] = st.MeshIP
	allPairs("after leaving and joining again")
	m.JSON("seed", &st, "status")
	for _, pe := range st.Peers {
		if pe.Node == "nat" && pe.LastHandshake.IsZero() {
			t.Errorf("seed shows no handshake with the rejoined nat: %+v", pe)
		}
	}

	// Down and back with the same key: the peers' helpers hold the old
	// session's endpoint for this very key.
	key := func() string {
		var k struct {
			Tunnel struct {
				PublicKey string `json:"publicKey"`
			} `json:"tunnel"`
		}
		m.JSON("nat", &k, "status")
		return k.Tunnel.PublicKey
	}
	before := key()
	if out, err := m.meshctlIn("nat", "down", "--config-file", n.ConfigFile, "--agent-binary", filepath.Join(binDir, "weft-agent")); err != nil {
		t.Fatalf("down: %v\n%s", err, out)
	}
	testutil.Eventually(t, 40*time.Second, "peers drop nat after down", func() error {
		if err := noPeer(m, "seed", "nat", natCIDR); err != nil {
			return err
		}
		return noPeer(m, "pub", "nat", natCIDR)
	})
	if out, err := m.meshctlIn("nat", append([]string{"join"}, nodeFlags(n)...)...); err != nil {
		t.Fatalf("join after down: %v\n%s", err, out)
	}
	m.WaitHealthy("nat")
	if after := key(); after != before {
		t.Fatalf("the key changed across down and join: %s, then %s", before, after)
	}
	allPairs("after down and join with the same key")
}

// pingFromNode sends one ping from a node's own namespace to ip.
func pingFromNode(m *Mesh, from, ip string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	out, err := m.Lab.Exec(ctx, m.node(from).Lab.Netns, "ping", "-n", "-c", "1", "-W", "1", ip)
	if err != nil {
		return fmt.Errorf("%v: %s", err, out)
	}
	return nil
}
