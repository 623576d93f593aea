package e2e

import (
	"fmt"
	"os"
	"regexp"
	"testing"
	"time"

	"github.com/weftmesh/weft/agent/config"
	"github.com/weftmesh/weft/internal/lab"
	"github.com/weftmesh/weft/internal/testutil"
	"github.com/weftmesh/weft/pki"
)

// TestCertRenewal: node certificates that live 45 s are renewed by the
// agents before they expire, and a node keeps working past its first
// certificate's expiry — etcd, the seed's node services (a new identity)
// and the mesh — also across an agent restart, which makes every
// connection anew with the renewed certificate.
func TestCertRenewal(t *testing.T) {
	testutil.E2E(t)
	m := NewMesh(t, &lab.Spec{Sites: []lab.SiteSpec{
		{Name: "site1", Nodes: []lab.NodeSpec{{Name: "seed", Workloads: []lab.WorkloadSpec{{Name: "db"}}}}},
		{Name: "site2", Nodes: []lab.NodeSpec{{Name: "a1", Workloads: []lab.WorkloadSpec{{Name: "web"}, {Name: "api"}}}}},
	}})
	m.Up("seed", "--", "--node-cert-validity", "45s")
	n := m.Join("a1", "")
	cfg, err := config.Load(n.ConfigFile)
	if err != nil {
		t.Fatal(err)
	}
	certOf := func() (serial string, notAfter time.Time) {
		t.Helper()
		data, err := os.ReadFile(cfg.Etcd.CertFile)
		if err != nil {
			t.Fatal(err)
		}
		c, err := pki.ParseCertPEM(data)
		if err != nil {
			t.Fatal(err)
		}
		return c.SerialNumber.String(), c.NotAfter
	}
	serial0, until0 := certOf()
	if life := time.Until(until0); life > 50*time.Second {
		t.Fatalf("a1's certificate is valid for %v, want about 45 s", life)
	}
	ips := map[string]string{"web": m.AddWorkload("web", "app=web"), "db": m.AddWorkload("db", "app=db")}
	m.Echo("db", ips["db"], 7000)

	testutil.Eventually(t, 45*time.Second, "a1 to renew its certificate", func() error {
		if s, _ := certOf(); s == serial0 {
			return fmt.Errorf("still certificate #%s", serial0)
		}
		return nil
	})
	_, until1 := certOf()
	t.Logf("renewed: first certificate until %s, the new one until %s", until0.Format(time.TimeOnly), until1.Format(time.TimeOnly))
	// Renewed when about a third was left, not at once (which would renew
	// again and again).
	if gain := until1.Sub(until0); gain < 15*time.Second {
		t.Fatalf("the renewed certificate ends only %v after the first: it was renewed too early", gain)
	}
	// Past the first certificate's end: everything still works.
	time.Sleep(time.Until(until0) + 3*time.Second)
	p := m.node("a1").Proc
	_ = p.Stop()
	p, err = m.startJoin(n, m.Token, "")
	if err != nil {
		t.Fatal(err)
	}
	n.Proc = p
	m.waitOutput(p, regexp.MustCompile(`Already joined`), 30*time.Second, "join to restart the agent")
	m.WaitHealthy("a1")
	var st struct {
		Etcd struct {
			Reachable bool   `json:"reachable"`
			Error     string `json:"error"`
		} `json:"etcd"`
	}
	m.JSON("a1", &st, "status")
	if !st.Etcd.Reachable {
		t.Fatalf("a1 does not reach etcd with its renewed certificate: %s", st.Etcd.Error)
	}
	// A new label set: its identity comes from the seed's node services.
	api := m.AddWorkload("api", "app=api")
	testutil.Eventually(t, 30*time.Second, "web -> db and api -> db after the first certificate expired", func() error {
		if err := pingOnce(m, "web", ips["db"]); err != nil {
			return err
		}
		return pingOnce(m, "api", ips["db"])
	})
	if api == "" {
		t.Fatal("no address for api")
	}
}
