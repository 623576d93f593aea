package weft

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/terraform-plugin-testing/helper/resource"
	"github.com/hashicorp/terraform-plugin-testing/plancheck"
	"github.com/hashicorp/terraform-plugin-testing/terraform"

	"github.com/weftmesh/weft/agent/api"
	"github.com/weftmesh/weft/internal/lab"
)

func providerBlock(cred, netns string) string {
	return fmt.Sprintf("provider \"weft\" {\n  credentials_file  = %q\n  network_namespace = %q\n}\n", cred, netns)
}

// policyHCL is a policy written in HCL through yamlencode, as a user would.
func policyHCL(client string) string {
	return fmt.Sprintf(`
resource "weft_policy" "web" {
  name = "tfweb"
  document = yamlencode({
    apiVersion = "weft.dev/v1"
    kind       = "Policy"
    metadata   = { name = "tfweb" }
    spec = {
      endpointSelector = { matchLabels = { app = "web" } }
      ingress          = [{ from = [{ matchLabels = { app = %q } }] }]
    }
  })
}
`, client)
}

const policyJSON = `{"apiVersion":"weft.dev/v1","kind":"Policy","metadata":{"name":"tfweb"},"spec":{"endpointSelector":{"matchLabels":{"app":"web"}},"ingress":[{"from":[{"matchLabels":{"app":"%s"}}]}]}}`

func tokenHCL(labels string) string {
	return fmt.Sprintf(`
resource "weft_token" "web" {
  labels       = { %s }
  allow_labels = ["app=web"]
  ttl          = "30m"
}

resource "weft_token" "fleet" {
  cluster  = "tfedge"
  max_uses = 5
  ttl      = "2h"
}

data "weft_nodes" "all" {
  depends_on = [weft_token.web]
}

data "weft_nodes" "edge" {
  cluster = "tfedge"
}

data "weft_identities" "all" {}
`, labels)
}

// TestAccWeft runs the provider against a real seed in a lab: tokens,
// policies and data sources through the admin API, checked against what
// the API then says, with updates, drift, import, plan-time errors with
// meshctl's messages, and destroy.
func TestAccWeft(t *testing.T) {
	accEnv(t)
	start := time.Now()
	m := newMesh(t, &lab.Spec{Sites: []lab.SiteSpec{
		{Name: "s1", Nodes: []lab.NodeSpec{{Name: "tfseed"}}},
		{Name: "s2", Nodes: []lab.NodeSpec{{Name: "tfvm"}}},
	}})
	seed := m.up("tfseed", nil)
	m.join("tfvm", seed)
	cred := m.credential(seed, "terraform")
	admin := m.admin(seed, cred)
	t.Logf("lab, seed, joined node and credential: %s", time.Since(start).Round(time.Second))
	prov := providerBlock(cred, seed.netns)

	var tokenIDs []string // every token the provider made
	stateID := func(s *terraform.State, res string) (string, error) {
		r, ok := s.RootModule().Resources[res]
		if !ok {
			return "", fmt.Errorf("%s not in state", res)
		}
		return r.Primary.Attributes["id"], nil
	}
	tokenListed := func(res string) resource.TestCheckFunc {
		return func(s *terraform.State) error {
			id, err := stateID(s, res)
			if err != nil {
				return err
			}
			tokenIDs = append(tokenIDs, id)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			toks, err := admin.Tokens(ctx)
			if err != nil {
				return err
			}
			for _, tk := range toks {
				if tk.ID == id {
					if tk.Revoked {
						return fmt.Errorf("token %s is revoked", id)
					}
					return nil
				}
			}
			return fmt.Errorf("the seed does not list token %s", id)
		}
	}
	revoked := func(ids ...string) error {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		toks, err := admin.Tokens(ctx)
		if err != nil {
			return err
		}
		for _, id := range ids {
			i := slices.IndexFunc(toks, func(tk api.Token) bool { return tk.ID == id })
			if i >= 0 && !toks[i].Revoked {
				return fmt.Errorf("token %s is still usable", id)
			}
		}
		return nil
	}
	policyIs := func(client string) resource.TestCheckFunc {
		return func(*terraform.State) error {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			p, err := admin.GetPolicy(ctx, "tfweb")
			if err != nil {
				return fmt.Errorf("the seed has no policy tfweb: %w", err)
			}
			if !strings.Contains(p.Document, client) {
				return fmt.Errorf("the stored policy does not admit app=%s:\n%s", client, p.Document)
			}
			return nil
		}
	}
	applyPolicy := func(doc string) func() {
		return func() {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if _, err := admin.ApplyPolicy(ctx, api.ApplyPolicyRequest{Filename: "drift.json", Document: doc}); err != nil {
				t.Fatalf("changing the policy behind Terraform's back: %v", err)
			}
		}
	}

	resource.Test(t, resource.TestCase{
		ProtoV6ProviderFactories: factories,
		Steps: []resource.TestStep{
			// Plan-time errors, with meshctl's messages, before anything is made.
			{Config: prov + `resource "weft_token" "bad" { cluster_id = 70000 }`, PlanOnly: true,
				ExpectError: regexp.MustCompile(`(?s)Invalid cluster_id.*70000 is out of range: use 1\.\.`)},
			{Config: prov + `resource "weft_token" "bad" { ttl = "10s" }`, PlanOnly: true,
				ExpectError: regexp.MustCompile(`(?s)Invalid ttl.*10s is out of range: use 1m to 720h`)},
			{Config: prov + `resource "weft_token" "bad" { mesh_pool = "10.1.0.0/16" }`, PlanOnly: true,
				ExpectError: regexp.MustCompile(`(?s)Invalid mesh_pool.*is not a CIDR in canonical form inside 100\.64\.0\.0/10`)},
			{Config: prov + `resource "weft_token" "bad" { max_uses = 20000 }`, PlanOnly: true,
				ExpectError: regexp.MustCompile(`(?s)Invalid max_uses.*20000 is out of range: use 1 to 10000`)},
			{Config: prov + `resource "weft_token" "bad" { cluster = "Not_A_Name" }`, PlanOnly: true,
				ExpectError: regexp.MustCompile(`(?s)Invalid cluster.*cluster`)},
			{Config: prov + `resource "weft_policy" "bad" {
  name     = "tfbad"
  document = "apiVersion: weft.dev/v1\nkind: Policy\nmetadata:\n  name: tfbad\nspec:\n  endpointSelector: {}\n  ingress:\n  - fromm: []\n"
}`, PlanOnly: true, ExpectError: regexp.MustCompile(`(?s)Invalid policy document.*policy not applied, nothing changed: document:\d+`)},
			{Config: prov + strings.Replace(policyHCL("client"), `metadata   = { name = "tfweb" }`, `metadata   = { name = "other" }`, 1), PlanOnly: true,
				ExpectError: regexp.MustCompile(`metadata\.name\s+is\s+"other",\s+not\s+"tfweb"`)},
			// Create; the framework's re-plan after each apply must be empty.
			{
				Config: prov + tokenHCL(`app = "web"`) + policyHCL("client"),
				Check: resource.ComposeAggregateTestCheckFunc(
					resource.TestMatchResourceAttr("weft_token.web", "token", regexp.MustCompile(`^weft1\.`)),
					resource.TestCheckResourceAttr("weft_token.web", "max_uses", "1"),
					resource.TestCheckResourceAttrSet("weft_token.web", "expires_at"),
					resource.TestCheckResourceAttrSet("weft_token.web", "cluster"),
					resource.TestCheckResourceAttr("weft_token.fleet", "cluster", "tfedge"),
					resource.TestCheckResourceAttrSet("weft_token.fleet", "cluster_id"),
					resource.TestMatchResourceAttr("weft_token.fleet", "mesh_pool", regexp.MustCompile(`^100\.`)),
					tokenListed("weft_token.web"), tokenListed("weft_token.fleet"),
					resource.TestCheckResourceAttr("weft_policy.web", "name", "tfweb"),
					resource.TestCheckResourceAttrSet("weft_policy.web", "revision"),
					policyIs("client"),
					resource.TestCheckResourceAttr("data.weft_nodes.all", "nodes.#", "2"),
					resource.TestCheckTypeSetElemNestedAttrs("data.weft_nodes.all", "nodes.*", map[string]string{"name": "tfvm"}),
					resource.TestCheckTypeSetElemNestedAttrs("data.weft_nodes.all", "nodes.*", map[string]string{"name": "tfseed"}),
					resource.TestMatchTypeSetElemNestedAttrs("data.weft_nodes.all", "nodes.*", map[string]*regexp.Regexp{"name": regexp.MustCompile("^tfvm$"), "mesh_ip": regexp.MustCompile(`^100\.`), "public_key": regexp.MustCompile(`.{40}`)}),
					resource.TestCheckResourceAttr("data.weft_nodes.edge", "nodes.#", "0"),
					resource.TestCheckTypeSetElemNestedAttrs("data.weft_identities.all", "identities.*", map[string]string{"reserved": "true"}),
				),
			},
			// The same policy stored with other formatting is no change.
			{Config: prov + tokenHCL(`app = "web"`) + policyHCL("client"), PreConfig: applyPolicy(fmt.Sprintf(policyJSON, "client")), PlanOnly: true},
			// Another policy under the name is drift: the plan puts it back.
			{Config: prov + tokenHCL(`app = "web"`) + policyHCL("client"), PreConfig: applyPolicy(fmt.Sprintf(policyJSON, "intruder")), PlanOnly: true, ExpectNonEmptyPlan: true},
			{Config: prov + tokenHCL(`app = "web"`) + policyHCL("client"), Check: policyIs("client")},
			// Changed labels replace the token (the old one is revoked); a
			// changed document updates the policy in place.
			{
				Config: prov + tokenHCL(`app = "web", tier = "front"`) + policyHCL("api"),
				ConfigPlanChecks: resource.ConfigPlanChecks{PreApply: []plancheck.PlanCheck{
					plancheck.ExpectResourceAction("weft_token.web", plancheck.ResourceActionDestroyBeforeCreate),
					plancheck.ExpectResourceAction("weft_token.fleet", plancheck.ResourceActionNoop),
					plancheck.ExpectResourceAction("weft_policy.web", plancheck.ResourceActionUpdate),
				}},
				Check: resource.ComposeAggregateTestCheckFunc(
					resource.TestCheckResourceAttr("weft_token.web", "labels.tier", "front"),
					tokenListed("weft_token.web"), policyIs("api"),
					func(*terraform.State) error { return revoked(tokenIDs[0]) },
				),
			},
			// A token revoked behind Terraform's back is made anew.
			{
				Config: prov + tokenHCL(`app = "web", tier = "front"`) + policyHCL("api"),
				PreConfig: func() {
					ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
					defer cancel()
					if err := admin.RevokeToken(ctx, tokenIDs[len(tokenIDs)-1]); err != nil {
						t.Fatal(err)
					}
				},
				ConfigPlanChecks: resource.ConfigPlanChecks{PreApply: []plancheck.PlanCheck{
					plancheck.ExpectResourceAction("weft_token.web", plancheck.ResourceActionCreate),
				}},
				Check: tokenListed("weft_token.web"),
			},
			// Import by name.
			{ResourceName: "weft_policy.web", ImportState: true, ImportStateId: "tfweb", ImportStateVerify: true, ImportStateVerifyIdentifierAttribute: "name"},
			{Config: prov + `resource "weft_policy" "x" {
  name = "nope"
  document = "x"
}`, ResourceName: "weft_policy.x", ImportState: true, ImportStateId: "no-such-policy", ExpectError: regexp.MustCompile(`(?i)cannot import non-existent remote object`)},
		},
		CheckDestroy: func(*terraform.State) error {
			if err := revoked(tokenIDs...); err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if _, err := admin.GetPolicy(ctx, "tfweb"); !errors.Is(err, api.ErrNotFound) {
				return fmt.Errorf("policy tfweb after destroy: %v, want not found", err)
			}
			return nil
		},
	})

	// Security: a joined node's own certificate (same CA, node role) and a
	// certificate of another CA are refused by the admin API, whatever
	// the provider asks.
	vm := m.nodes["tfvm"]
	certPEM, err1 := os.ReadFile(filepath.Join(vm.dir, "credentials", "node.pem"))
	keyPEM, err2 := os.ReadFile(filepath.Join(vm.dir, "credentials", "node-key.pem"))
	if err1 != nil || err2 != nil {
		t.Fatal(err1, err2)
	}
	stolen := writeCredential(t, cred, func(c *api.AdminCredential) { c.Cert, c.Key = string(certPEM), string(keyPEM) })
	fc, fk := foreignCert(t)
	foreign := writeCredential(t, cred, func(c *api.AdminCredential) { c.Cert, c.Key = fc, fk })
	resource.Test(t, resource.TestCase{
		ProtoV6ProviderFactories: factories,
		Steps: []resource.TestStep{
			{Config: providerBlock(stolen, seed.netns) + `data "weft_identities" "x" {}`,
				ExpectError: regexp.MustCompile(`(?is)Listing identities.*(permission|admin)`)},
			{Config: providerBlock(stolen, seed.netns) + `resource "weft_token" "x" {}`,
				ExpectError: regexp.MustCompile(`(?is)Creating the join token.*(permission|admin)`)},
			{Config: providerBlock(foreign, seed.netns) + `data "weft_nodes" "x" {}`,
				ExpectError: regexp.MustCompile(`(?is)Listing nodes.*(certificate|tls)`)},
		},
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if toks, err := admin.Tokens(ctx); err != nil || len(toks) != len(tokenIDs)+1 {
		// The +1 is the token 'meshctl up' made.
		t.Errorf("after the refused requests the seed lists %d tokens (%v), want %d", len(toks), err, len(tokenIDs)+1)
	}
	t.Logf("TestAccWeft: %s in all", time.Since(start).Round(time.Second))
}
