package e2e

import (
	"fmt"
	"net/netip"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/weftmesh/weft/internal/lab"
	"github.com/weftmesh/weft/internal/testutil"
)

// createdTokenJSON is what `meshctl token create -o json` prints.
type createdTokenJSON struct {
	Cluster        string `json:"cluster"`
	ClusterID      int    `json:"clusterID"`
	MeshPool       string `json:"meshPool"`
	ClusterCreated bool   `json:"clusterCreated"`
	JoinToken      string `json:"joinToken"`
}

// JoinWithToken is Join with a token other than the one `meshctl up` printed.
func (m *Mesh) JoinWithToken(name, token, labels string) *MeshNode {
	m.t.Helper()
	n := m.newNode(name)
	p, err := m.startJoin(n, token, labels)
	if err != nil {
		m.t.Fatal(err)
	}
	n.Proc = p
	m.waitOutput(p, regexp.MustCompile(`(?i)agent .*(ready|running)|Joined the mesh`), 60*time.Second, "meshctl join on "+name)
	m.WaitHealthy(name)
	return n
}

// TestSharedModeSecondCluster: a second cluster in the seed's etcd, made
// the documented way — `meshctl token create --cluster west` — and
// nothing else: the token creates west's record with the next id and a
// pool disjoint from default's, west's nodes join with it and take their
// addresses from that pool, and every workload reaches every other.
func TestSharedModeSecondCluster(t *testing.T) {
	m := NewMesh(t, &lab.Spec{Sites: []lab.SiteSpec{
		{Name: "s1", Nodes: []lab.NodeSpec{{Name: "seed"}, {Name: "d1", Workloads: []lab.WorkloadSpec{{Name: "wd"}}}}},
		{Name: "s2", Nodes: []lab.NodeSpec{{Name: "w1", Workloads: []lab.WorkloadSpec{{Name: "ww1"}}}, {Name: "w2", Workloads: []lab.WorkloadSpec{{Name: "ww2"}}}}},
	}})
	m.Up("seed")
	m.Join("d1", "")

	var tok createdTokenJSON
	m.JSON("seed", &tok, "token", "create", "--cluster", "west", "--reusable", "--max-uses", "2")
	if tok.Cluster != "west" || tok.ClusterID != 2 || tok.MeshPool != "100.65.0.0/16" || !tok.ClusterCreated || tok.JoinToken == "" {
		t.Fatalf("token create --cluster west = %+v: want a new cluster west with id 2 and 100.65.0.0/16", tok)
	}
	westPool := netip.MustParsePrefix(tok.MeshPool)

	t.Run("the next token for west shows it as it is, and other ids are refused", func(t *testing.T) {
		m := m.For(t)
		out := m.MustMeshctl("seed", "token", "create", "--cluster", "west")
		if !regexp.MustCompile(`\nwest +2 +100\.65\.0\.0/16 +existing\n`).MatchString(out) {
			t.Errorf("token create --cluster west again:\n%s", out)
		}
		out, err := m.Meshctl("seed", "token", "create", "--cluster", "west", "--cluster-id", "3")
		if err == nil || !strings.Contains(out, "id 2") || !strings.Contains(out, "id 3") {
			t.Errorf("token create --cluster west --cluster-id 3: %v\n%s", err, out)
		}
	})

	// No agent flags: the joining nodes take id and pool from the record.
	m.JoinWithToken("w1", tok.JoinToken, "")
	m.JoinWithToken("w2", tok.JoinToken, "")

	t.Run("west's nodes are in west, addressed from its pool", func(t *testing.T) {
		m := m.For(t)
		for _, n := range []string{"w1", "w2"} {
			var st struct {
				Cluster string   `json:"cluster"`
				CIDRs   []string `json:"cidrs"`
			}
			m.JSON(n, &st, "status")
			if st.Cluster != "west" || len(st.CIDRs) == 0 {
				t.Fatalf("%s: status %+v", n, st)
			}
			for _, c := range st.CIDRs {
				if p, err := netip.ParsePrefix(c); err != nil || !westPool.Contains(p.Addr()) {
					t.Errorf("%s holds %s, outside west's pool %s", n, c, westPool)
				}
			}
		}
	})

	ips := map[string]string{
		"wd":  m.AddWorkload("wd", "app=db"),
		"ww1": m.AddWorkload("ww1", "app=web"),
		"ww2": m.AddWorkload("ww2", "app=api"),
	}
	for w, ip := range ips {
		m.Echo(w, ip, 8080)
	}
	if !strings.HasPrefix(ips["wd"], "100.64.") || !strings.HasPrefix(ips["ww1"], "100.65.") || !strings.HasPrefix(ips["ww2"], "100.65.") {
		t.Fatalf("workload addresses %v: want default's in 100.64.0.0/16, west's in 100.65.0.0/16", ips)
	}

	t.Run("every node sees every other as a peer", func(t *testing.T) {
		m := m.For(t)
		for _, n := range []string{"seed", "d1", "w1", "w2"} {
			testutil.Eventually(t, 30*time.Second, n+" has 3 peers", func() error {
				var st statusJSON
				m.JSON(n, &st, "status")
				if len(st.Peers) != 3 {
					return fmt.Errorf("%d peers: %+v", len(st.Peers), st.Peers)
				}
				return nil
			})
		}
	})

	t.Run("every workload reaches every other, across the two clusters", func(t *testing.T) {
		m := m.For(t)
		for _, from := range []string{"wd", "ww1", "ww2"} {
			for _, to := range []string{"wd", "ww1", "ww2"} {
				if from == to {
					continue
				}
				testutil.Eventually(t, 60*time.Second, from+" -> "+to, func() error { return m.Talk(from, "tcp", ips[to], 8080, "hello-"+from) })
			}
		}
	})
}
