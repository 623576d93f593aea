package netpol

import (
	"errors"
	"strings"
	"testing"

	"github.com/weftmesh/weft/identity"
	"github.com/weftmesh/weft/policy"
)

func TestFromWeftPolicy(t *testing.T) {
	// The .spec of a WeftPolicy as the API server returns it (keys sorted).
	spec := `{"egress":[],"endpointSelector":{"matchLabels":{"k8s:app":"db"}},"ingress":[{"from":[{"matchLabels":{"app":"web"}},{"entities":["host"]}],"ports":[{"port":5432},{"port":"metrics","protocol":"TCP"}]}],"ingressDeny":[{"from":[{"cidr":"198.51.100.0/24"}]}]}`
	p, err := FromWeftPolicy("db", []byte(spec))
	if err != nil {
		t.Fatal(err)
	}
	if p.Name != "weftpolicy:db" || p.Description != "WeftPolicy db" || p.File != "" || p.Line != 0 {
		t.Fatalf("name %q, description %q, file %q line %d", p.Name, p.Description, p.File, p.Line)
	}
	if p.Egress == nil || len(p.Egress) != 0 || len(p.Ingress) != 1 || len(p.IngressDeny) != 1 || p.EgressDeny != nil {
		t.Fatalf("sections: %+v", p)
	}
	if p.Ingress[0].Line != 0 || p.Ingress[0].Ports[1] != (policy.PortRule{Protocol: policy.ProtoTCP, Name: "metrics"}) {
		t.Fatalf("rule %+v", p.Ingress[0])
	}
	// No node rule is added: a WeftPolicy means what it says.
	if len(p.Ingress[0].Peers) != 2 {
		t.Fatalf("peers %+v", p.Ingress[0].Peers)
	}
	if err := p.Validate(); err != nil {
		t.Fatal(err)
	}
	// It compiles next to a stored policy and a NetworkPolicy.
	np, err := Translate(decode(t, `{metadata: {name: db, namespace: x}, spec: {podSelector: {}, ingress: []}}`))
	if err != nil {
		t.Fatal(err)
	}
	stored, err := policy.ParseOne("db.yaml", []byte("apiVersion: weft.dev/v1\nkind: Policy\nmetadata: {name: db}\nspec: {endpointSelector: {}, egress: []}\n"))
	if err != nil {
		t.Fatal(err)
	}
	c := policy.NewCompiler(identity.ReservedIdentities())
	if _, err := c.ReplacePolicies([]*policy.Policy{p, np, stored}); err != nil {
		t.Fatalf("three policies all named after db: %v", err)
	}
	if n := len(c.Policies()); n != 3 {
		t.Fatalf("%d policies, want 3", n)
	}
}

// TestFromWeftPolicyMessages checks that a bad spec is refused with the
// very reason `meshctl policy apply` gives for the same spec in a file.
func TestFromWeftPolicyMessages(t *testing.T) {
	for _, spec := range []string{
		`{"endpointSelector":{},"ingres":[]}`,
		`{"ingress":[]}`,
		`{"endpointSelector":{}}`,
		`{"endpointSelector":{"matchLabels":{"debug":true}},"ingress":[]}`,
		`{"endpointSelector":{"matchLabels":{"v":2}},"ingress":[]}`,
		`{"endpointSelector":{},"ingress":[{"from":[{"entities":["world"],"matchLabels":{"a":"b"}}]}]}`,
		`{"endpointSelector":{},"ingress":[{"from":[{"except":["10.0.0.0/16"]}]}]}`,
		`{"endpointSelector":{},"ingress":[{"from":[{"cidr":"10.1.2.3/8"}]}]}`,
		`{"endpointSelector":{},"ingress":[{"from":[{"entities":["cluster"]}]}]}`,
		`{"endpointSelector":{},"ingress":[{"ports":[{"port":70000}]}]}`,
		`{"endpointSelector":{},"ingress":[{"ports":[{"port":"HTTP"}]}]}`,
		`{"endpointSelector":{},"ingress":[{"ports":[{"port":"http","endPort":90}]}]}`,
		`{"endpointSelector":{},"ingress":[{"ports":[{"protocol":"tcp"}]}]}`,
		`{"endpointSelector":{},"egress":[{"from":[{}]}]}`,
		`{"endpointSelector":{"matchExpressions":[{"key":"a","operator":"Is","values":["b"]}]},"ingress":[]}`,
		`{"endpointSelector":{},"ingress":null}`,
	} {
		_, err := FromWeftPolicy("db", []byte(spec))
		var pe *policy.ParseError
		if err == nil || !errors.As(err, &pe) || !errors.Is(err, policy.ErrInvalid) {
			t.Errorf("FromWeftPolicy(%s) = %v, want a *policy.ParseError", spec, err)
			continue
		}
		if pe.Line != 0 || !strings.HasPrefix(err.Error(), "WeftPolicy db: ") {
			t.Errorf("error %q: want it to start with the object and carry no position", err)
		}
		doc := `{"apiVersion":"weft.dev/v1","kind":"Policy","metadata":{"name":"db"},"spec":` + spec + `}`
		_, applyErr := policy.Parse("db.json", []byte(doc))
		if applyErr == nil {
			t.Errorf("policy apply accepts %s", doc)
			continue
		}
		if got, want := reason(err), reason(applyErr); got != want {
			t.Errorf("spec %s:\n  WeftPolicy: %s\n  apply:      %s", spec, got, want)
		}
	}
	if _, err := FromWeftPolicy("Db", []byte(`{"endpointSelector":{},"ingress":[]}`)); err == nil || !strings.Contains(err.Error(), `"weftpolicy:Db"`) {
		t.Errorf("an object name Kubernetes would refuse: %v", err)
	}
}

// reason is an error's text after the position and "invalid policy: ".
func reason(err error) string {
	s := err.Error()
	if _, after, ok := strings.Cut(s, "invalid policy: "); ok {
		return after
	}
	return s
}
