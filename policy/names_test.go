package policy

import (
	"errors"
	"strings"
	"testing"
)

func TestImportedNames(t *testing.T) {
	long := strings.Repeat("a", 63) + "." + strings.Repeat("b", 63) + "." + strings.Repeat("c", 63) + "." + strings.Repeat("d", 61) // 253
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{ImportedName("netpol", "x", "allow-web"), true},
		{ImportedName("weftpolicy", "db.east"), true},
		{ImportedName("netpol", strings.Repeat("n", 63), long), true},
		{ImportedName("netpol", "x", long+"a"), false},
		{ImportedName("netpol", "X", "a"), false},
		{ImportedName("netpol", "x", ""), false},
		{ImportedName("", "x"), false},
		{ImportedName("Net", "x"), false},
		{ImportedName("9net", "x"), false},
		{ImportedName("net_pol", "x"), false},
		{ImportedName("o", "a", "b", "c", "d"), false},
		{"netpol:x:y", false},
	} {
		if err := ValidateImportedName(tc.name); (err == nil) != tc.ok {
			t.Errorf("ValidateImportedName(%q) = %v, want ok=%v", tc.name, err, tc.ok)
		}
		p := &Policy{Name: tc.name, Ingress: []Rule{}}
		if err := p.Validate(); (err == nil) != tc.ok {
			t.Errorf("Validate of a policy named %q = %v, want ok=%v", tc.name, err, tc.ok)
		}
	}
	// A stored policy can never have an imported name: the parser (what
	// `policy apply` runs) refuses it.
	_, err := Parse("p.yaml", []byte(hdr+`metadata: {name: "netpol:x/allow-web"}
spec: {endpointSelector: {}, ingress: []}`))
	if err == nil || !strings.Contains(err.Error(), "not a valid policy name") {
		t.Fatalf("parse of an imported name: %v", err)
	}
}

func TestParseSpec(t *testing.T) {
	p, err := ParseSpec("WeftPolicy db", "weftpolicy:db", []byte(`{"endpointSelector":{"matchLabels":{"app":"db"}},"ingress":[{"from":[{"matchLabels":{"app":"web"}}],"ports":[{"port":5432},{"port":"metrics"}]}],"egressDeny":[]}`))
	if err != nil {
		t.Fatal(err)
	}
	if p.Name != "weftpolicy:db" || len(p.Ingress) != 1 || p.Egress != nil || p.EgressDeny == nil || len(p.Ingress[0].Ports) != 2 || p.Ingress[0].Ports[1].Name != "metrics" {
		t.Fatalf("parsed %+v", p)
	}
	if err := p.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, spec, want string
	}{
		{"weftpolicy:db", `{"endpointSelector":{},"ingres":[]}`, `unknown field "ingres" in spec (allowed: endpointSelector, ingress, egress, ingressDeny, egressDeny)`},
		{"weftpolicy:db", `{"ingress":[]}`, "spec.endpointSelector is missing"},
		{"weftpolicy:db", `{"endpointSelector":{}}`, "would do nothing"},
		{"weftpolicy:db", `{"endpointSelector":{"matchLabels":{"debug":true}},"ingress":[]}`, `quote it ("true")`},
		{"weftpolicy:db", ``, "the spec is empty"},
		{"weftpolicy:db", `null`, "the spec is empty"},
		{"weftpolicy:db", `[]`, "spec must be a mapping"},
		{"weftpolicy:db", `{"endpointSelector":{}`, "YAML syntax"},
		{"weftpolicy:Db", `{"endpointSelector":{},"ingress":[]}`, "not a DNS subdomain"},
		{"weftpolicy:db", `{"endpointSelector":{},"ingress":[]}` + strings.Repeat(" ", MaxDocumentBytes), "bytes long"},
	} {
		_, err := ParseSpec("WeftPolicy db", tc.name, []byte(tc.spec))
		var pe *ParseError
		if err == nil || !errors.Is(err, ErrInvalid) || !errors.As(err, &pe) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParseSpec(%q, %.60q) = %v, want a *ParseError with %q", tc.name, tc.spec, err, tc.want)
		}
	}
}
