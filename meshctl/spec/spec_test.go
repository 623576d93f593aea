package spec

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func ptr[T any](v T) *T { return &v }

func TestTokenRequestErrors(t *testing.T) {
	for _, tc := range []struct {
		name  string
		tok   Token
		field string
		text  string // the whole meshctl message, prefix
	}{
		{"cluster name", Token{Cluster: "Bad_Name", TTL: time.Hour}, "cluster", "--cluster: "},
		{"cluster id low", Token{ClusterID: ptr(0), TTL: time.Hour}, "cluster-id", "--cluster-id 0 is out of range: use 1.."},
		{"cluster id high", Token{ClusterID: ptr(1 << 20), TTL: time.Hour}, "cluster-id", "--cluster-id 1048576 is out of range"},
		{"mesh pool outside", Token{MeshPool: ptr("10.0.0.0/16"), TTL: time.Hour}, "mesh-pool", `--mesh-pool: "10.0.0.0/16" is not a CIDR in canonical form inside 100.64.0.0/10`},
		{"mesh pool not canonical", Token{MeshPool: ptr("100.65.0.1/16"), TTL: time.Hour}, "mesh-pool", "--mesh-pool: "},
		{"mesh pool wider", Token{MeshPool: ptr("100.0.0.0/8"), TTL: time.Hour}, "mesh-pool", "--mesh-pool: "},
		{"labels map", Token{Labels: map[string]string{"bad key": "x"}, TTL: time.Hour}, "labels", "--labels: "},
		{"labels list", Token{LabelList: "novalue", TTL: time.Hour}, "labels", "--labels: "},
		{"allow labels", Token{AllowLabels: []string{"=x"}, TTL: time.Hour}, "allow-labels", "--allow-labels: "},
		{"pod cidrs", Token{PodCIDRs: []string{"100.96.0.1/16"}, TTL: time.Hour}, "pod-cidrs", `--pod-cidrs: "100.96.0.1/16" is not a CIDR in canonical form`},
		{"ttl short", Token{TTL: time.Second}, "ttl", "--ttl 1s is out of range: use 1m to 720h"},
		{"ttl long", Token{TTL: 721 * time.Hour}, "ttl", "--ttl 721h0m0s is out of range: use 1m to 720h"},
		{"reusable no max", Token{TTL: time.Hour, Reusable: true}, "reusable", "--reusable needs --max-uses N: how many machines may join with the token"},
		{"max without reusable", Token{TTL: time.Hour, MaxUses: ptr(3)}, "max-uses", "--max-uses needs --reusable (a token without it is single-use)"},
		{"max uses range", Token{TTL: time.Hour, Reusable: true, MaxUses: ptr(10001)}, "max-uses", "--max-uses 10001 is out of range: use 1 to 10000"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := TokenRequest(tc.tok)
			var fe *FieldError
			if !errors.As(err, &fe) {
				t.Fatalf("got %v, want a *FieldError", err)
			}
			if fe.Field != tc.field || !strings.HasPrefix(err.Error(), tc.text) {
				t.Errorf("got field %q text %q, want field %q text starting %q", fe.Field, err.Error(), tc.field, tc.text)
			}
			if fe.Msg == "" || !strings.HasSuffix(err.Error(), fe.Msg) {
				t.Errorf("Msg %q is not the end of the message %q", fe.Msg, err.Error())
			}
			if fe.Attribute() != strings.ReplaceAll(tc.field, "-", "_") {
				t.Errorf("Attribute() = %q", fe.Attribute())
			}
		})
	}
}

func TestTokenRequestOK(t *testing.T) {
	req, err := TokenRequest(Token{
		Cluster: "west", ClusterID: ptr(40), MeshPool: ptr(" 100.100.0.0/20 "),
		Labels: map[string]string{"app": "web"}, AllowLabels: []string{" app=web", "app=*"},
		PodCIDRs: []string{"100.96.0.0/16"}, TTL: 2 * time.Hour, Reusable: true, MaxUses: ptr(5),
	})
	if err != nil {
		t.Fatal(err)
	}
	if req.Cluster != "west" || req.ClusterID != 40 || req.MeshPool != "100.100.0.0/20" || req.Labels["app"] != "web" ||
		len(req.AllowLabels) != 2 || req.PodCIDRs[0] != "100.96.0.0/16" || time.Duration(req.TTL) != 2*time.Hour || req.MaxUses != 5 {
		t.Errorf("request %+v", req)
	}
	req, err = TokenRequest(Token{TTL: time.Hour, LabelList: "app=db,tier=x"})
	if err != nil || req.MaxUses != 1 || req.Labels["tier"] != "x" {
		t.Errorf("single use: %+v %v", req, err)
	}
}

func TestParseTTL(t *testing.T) {
	if d, err := ParseTTL("30m"); err != nil || d != 30*time.Minute {
		t.Errorf("30m: %v %v", d, err)
	}
	if _, err := ParseTTL("soon"); err == nil || !strings.HasPrefix(err.Error(), `--ttl: "soon" is not a duration`) {
		t.Errorf("soon: %v", err)
	}
	if _, err := ParseTTL("10s"); err == nil || err.(*FieldError).Field != "ttl" {
		t.Errorf("10s: %v", err)
	}
}

func TestPolicy(t *testing.T) {
	doc := "apiVersion: weft.dev/v1\nkind: Policy\nmetadata:\n  name: web\nspec:\n  endpointSelector:\n    matchLabels:\n      app: web\n  ingress:\n  - from:\n    - matchLabels:\n        app: client\n"
	p, err := Policy("weft_policy.web", "web", doc)
	if err != nil || p.Name != "web" {
		t.Fatalf("%v %v", p, err)
	}
	if _, err := Policy("f", "other", doc); err == nil || !strings.Contains(err.Error(), `metadata.name is "web", not "other"`) {
		t.Errorf("name mismatch: %v", err)
	}
	if _, err := Policy("f", "", doc+"---\n"+strings.Replace(doc, "name: web", "name: web2", 1)); err == nil || !strings.Contains(err.Error(), "2 policy documents") {
		t.Errorf("two documents: %v", err)
	}
	if _, err := Policy("f", "web", strings.Replace(doc, "kind: Policy", "kind: Nope", 1)); err == nil || !strings.HasPrefix(err.Error(), "f:") {
		t.Errorf("bad kind: %v", err)
	}
}

func TestSamePolicy(t *testing.T) {
	yamlDoc := "apiVersion: weft.dev/v1\nkind: Policy\nmetadata:\n  name: web\nspec:\n  endpointSelector:\n    matchLabels:\n      app: web\n  ingress:\n  - from:\n    - matchLabels:\n        app: client\n"
	jsonDoc := `{"apiVersion":"weft.dev/v1","kind":"Policy","metadata":{"name":"web"},"spec":{"endpointSelector":{"matchLabels":{"app":"web"}},"ingress":[{"from":[{"matchLabels":{"app":"client"}}]}]}}`
	a, err1 := Policy("a", "web", yamlDoc)
	b, err2 := Policy("b", "web", "# a comment\n\n"+jsonDoc)
	if err1 != nil || err2 != nil {
		t.Fatal(err1, err2)
	}
	if !SamePolicy(a, b) {
		t.Errorf("the YAML and JSON forms of one policy differ")
	}
	c, err := Policy("c", "web", strings.Replace(yamlDoc, "app: client", "app: other", 1))
	if err != nil {
		t.Fatal(err)
	}
	if SamePolicy(a, c) {
		t.Errorf("policies with different peers are the same")
	}
}
