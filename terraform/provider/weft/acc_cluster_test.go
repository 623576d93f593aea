package weft

import (
	"context"
	"fmt"
	"regexp"
	"testing"
	"time"

	"github.com/hashicorp/terraform-plugin-testing/helper/resource"
	"github.com/hashicorp/terraform-plugin-testing/terraform"

	"github.com/weftmesh/weft/internal/lab"
)

// TestAccClusterConnection connects two real clusters (each its own seed
// and etcd) with weft_cluster_connection, checks the connection through
// the admin API, and disconnects on destroy.
func TestAccClusterConnection(t *testing.T) {
	accEnv(t)
	start := time.Now()
	m := newMesh(t, &lab.Spec{Sites: []lab.SiteSpec{
		{Name: "sa", Nodes: []lab.NodeSpec{{Name: "tfa1"}}},
		{Name: "sb", Nodes: []lab.NodeSpec{{Name: "tfb1"}}},
	}})
	a := m.up("tfa1", []string{"--cluster", "tfa"})
	b := m.up("tfb1", []string{"--cluster", "tfb"}, "--cluster-id", "2", "--mesh-pool", "100.65.0.0/16")
	ctok := tokenRE.FindString(m.meshctl(b, "cluster", "token"))
	if ctok == "" {
		t.Fatal("meshctl cluster token printed no token")
	}
	cred := m.credential(a, "terraform")
	admin := m.admin(a, cred)
	connected := func(want bool) error {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		cs, err := admin.Clusters(ctx)
		if err != nil {
			return err
		}
		found := false
		for _, c := range cs {
			found = found || c.Name == "tfb"
		}
		if found != want {
			return fmt.Errorf("cluster tfb connected: %v, want %v (%+v)", found, want, cs)
		}
		return nil
	}
	prov := providerBlock(cred, a.netns)
	resource.Test(t, resource.TestCase{
		ProtoV6ProviderFactories: factories,
		Steps: []resource.TestStep{
			{Config: prov + `resource "weft_cluster_connection" "b" {
  token = "x"
  mode  = "sideways"
}`, PlanOnly: true, ExpectError: regexp.MustCompile(`(?s)Invalid mode.*use mirror or direct`)},
			{
				Config: prov + fmt.Sprintf(`resource "weft_cluster_connection" "b" { token = %q }`, ctok),
				Check: resource.ComposeAggregateTestCheckFunc(
					resource.TestCheckResourceAttr("weft_cluster_connection.b", "name", "tfb"),
					resource.TestCheckResourceAttr("weft_cluster_connection.b", "cluster_id", "2"),
					resource.TestCheckResourceAttr("weft_cluster_connection.b", "mesh_pool", "100.65.0.0/16"),
					resource.TestCheckResourceAttr("weft_cluster_connection.b", "mode", "mirror"),
					func(*terraform.State) error { return connected(true) },
				),
			},
		},
		CheckDestroy: func(*terraform.State) error { return connected(false) },
	})
	t.Logf("TestAccClusterConnection: %s in all", time.Since(start).Round(time.Second))
}
