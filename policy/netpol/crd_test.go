package netpol

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/weftmesh/weft/policy"
)

// crdFile is the WeftPolicy CRD, relative to this package.
const crdFile = "../../deploy/crds/weftpolicies.weft.dev.yaml"

type obj = map[string]any

func loadCRD(t *testing.T) obj {
	t.Helper()
	data, err := os.ReadFile(crdFile)
	if err != nil {
		t.Fatal(err)
	}
	var crd obj
	if err := yaml.UnmarshalStrict(data, &crd); err != nil {
		t.Fatalf("%s: %v", crdFile, err)
	}
	return crd
}

// at walks a path of keys (and list indexes) through decoded YAML.
func at(t *testing.T, v any, path ...any) any {
	t.Helper()
	for i, p := range path {
		switch k := p.(type) {
		case string:
			m, ok := v.(obj)
			if !ok {
				t.Fatalf("%v: not a mapping", path[:i+1])
			}
			v = m[k]
		case int:
			l, ok := v.([]any)
			if !ok || k >= len(l) {
				t.Fatalf("%v: not a list of more than %d", path[:i+1], k)
			}
			v = l[k]
		}
	}
	return v
}

func TestCRDShape(t *testing.T) {
	crd := loadCRD(t)
	for _, c := range []struct {
		path []any
		want any
	}{
		{[]any{"apiVersion"}, "apiextensions.k8s.io/v1"},
		{[]any{"kind"}, "CustomResourceDefinition"},
		{[]any{"metadata", "name"}, "weftpolicies.weft.dev"},
		{[]any{"spec", "group"}, "weft.dev"},
		{[]any{"spec", "scope"}, "Cluster"},
		{[]any{"spec", "names", "kind"}, "WeftPolicy"},
		{[]any{"spec", "names", "plural"}, "weftpolicies"},
		{[]any{"spec", "names", "singular"}, "weftpolicy"},
		{[]any{"spec", "names", "shortNames", 0}, "wp"},
		{[]any{"spec", "versions", 0, "name"}, "v1"},
		{[]any{"spec", "versions", 0, "served"}, true},
		{[]any{"spec", "versions", 0, "storage"}, true},
		{[]any{"spec", "versions", 0, "schema", "openAPIV3Schema", "type"}, "object"},
	} {
		if got := at(t, crd, c.path...); got != c.want {
			t.Errorf("%v = %v, want %v", c.path, got, c.want)
		}
	}
	if n := len(at(t, crd, "spec", "versions").([]any)); n != 1 {
		t.Errorf("%d versions, want 1", n)
	}
	// metadata.name must be <plural>.<group>, or the API server refuses it.
	if at(t, crd, "metadata", "name") != fmt.Sprint(at(t, crd, "spec", "names", "plural"), ".", at(t, crd, "spec", "group")) {
		t.Error("metadata.name is not <plural>.<group>")
	}
	cols := at(t, crd, "spec", "versions", 0, "additionalPrinterColumns").([]any)
	var names []string
	for _, c := range cols {
		col := c.(obj)
		names = append(names, col["name"].(string))
		if !strings.HasPrefix(col["jsonPath"].(string), ".") || col["type"] == nil {
			t.Errorf("printer column %v: needs a jsonPath from '.' and a type", col)
		}
	}
	if !slices.Equal(names, []string{"Selector", "Age"}) {
		t.Errorf("printer columns %v", names)
	}
	checkStructural(t, at(t, crd, "spec", "versions", 0, "schema", "openAPIV3Schema").(obj), "openAPIV3Schema")
}

// checkStructural applies the structural-schema rules the API server
// enforces that a YAML decode can check: every node has a type (or is
// int-or-string), no $ref, and x-kubernetes-preserve-unknown-fields is
// not needed (nothing a Weft spec has is pruned).
func checkStructural(t *testing.T, s obj, path string) {
	t.Helper()
	for _, k := range []string{"$ref", "definitions", "x-kubernetes-preserve-unknown-fields"} {
		if _, ok := s[k]; ok {
			t.Errorf("%s: %s", path, k)
		}
	}
	if s["x-kubernetes-int-or-string"] == true {
		if s["type"] != nil {
			t.Errorf("%s: int-or-string with a type", path)
		}
		return
	}
	if s["type"] == nil {
		t.Errorf("%s: no type", path)
	}
	if props, ok := s["properties"].(obj); ok {
		for k, v := range props {
			checkStructural(t, v.(obj), path+"."+k)
		}
	}
	if items, ok := s["items"].(obj); ok {
		checkStructural(t, items, path+"[]")
	}
	if ap, ok := s["additionalProperties"].(obj); ok {
		checkStructural(t, ap, path+"{}")
	}
}

// allowedRe finds the field list of a parser's unknown-field error.
var allowedRe = regexp.MustCompile(`\((?:allowed: |use )([^)]*)\)`)

// parserFields asks Weft's parser which fields an object takes: a spec
// with the unknown field zz where the object is makes it list them.
func parserFields(t *testing.T, spec string) []string {
	t.Helper()
	_, err := policy.ParseSpec("probe", "weftpolicy:probe", []byte(spec))
	if err == nil {
		t.Fatalf("parser accepts %s", spec)
	}
	m := allowedRe.FindStringSubmatch(err.Error())
	if m == nil {
		t.Fatalf("no field list in %v", err)
	}
	fs := strings.Split(strings.ReplaceAll(m[1], " or ", ", "), ", ")
	sort.Strings(fs)
	return fs
}

func propertyNames(s obj) []string {
	var out []string
	for k := range s["properties"].(obj) {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// TestCRDMatchesParser checks that the schema has exactly the fields and
// values Weft's parser takes, so that the API server neither refuses nor
// prunes what the parser accepts, and that a new parser field without a
// CRD field fails here.
func TestCRDMatchesParser(t *testing.T) {
	spec := at(t, loadCRD(t), "spec", "versions", 0, "schema", "openAPIV3Schema", "properties", "spec").(obj)
	props := spec["properties"].(obj)
	check := func(what string, schema obj, probe string) {
		t.Helper()
		if got, want := propertyNames(schema), parserFields(t, probe); !slices.Equal(got, want) {
			t.Errorf("%s: CRD fields %v, parser fields %v", what, got, want)
		}
	}
	check("spec", spec, `{"zz":1}`)
	check("endpointSelector", props["endpointSelector"].(obj), `{"endpointSelector":{"zz":1},"ingress":[]}`)
	exprs := props["endpointSelector"].(obj)["properties"].(obj)["matchExpressions"].(obj)["items"].(obj)
	check("matchExpressions entry", exprs, `{"endpointSelector":{"matchExpressions":[{"key":"a","zz":1}]},"ingress":[]}`)
	for _, sec := range []struct{ name, peers string }{{"ingress", "from"}, {"egress", "to"}, {"ingressDeny", "from"}, {"egressDeny", "to"}} {
		rule := props[sec.name].(obj)["items"].(obj)
		check(sec.name+" rule", rule, fmt.Sprintf(`{"endpointSelector":{},%q:[{"zz":1}]}`, sec.name))
		peer := rule["properties"].(obj)[sec.peers].(obj)["items"].(obj)
		check(sec.name+" peer", peer, fmt.Sprintf(`{"endpointSelector":{},%q:[{%q:[{"zz":1}]}]}`, sec.name, sec.peers))
		port := rule["properties"].(obj)["ports"].(obj)["items"].(obj)
		check(sec.name+" port", port, fmt.Sprintf(`{"endpointSelector":{},%q:[{"ports":[{"zz":1}]}]}`, sec.name))
		peerExprs := peer["properties"].(obj)["matchExpressions"].(obj)["items"].(obj)
		if !slices.Equal(propertyNames(peerExprs), propertyNames(exprs)) {
			t.Errorf("%s peer matchExpressions differ from endpointSelector's", sec.name)
		}
		// Every enum value is one the parser takes, and the enums list all
		// the parser takes.
		enum := func(s obj) []string {
			var out []string
			for _, v := range s["enum"].([]any) {
				out = append(out, v.(string))
			}
			sort.Strings(out)
			return out
		}
		protos := enum(port["properties"].(obj)["protocol"].(obj))
		if want := parserFields(t, `{"endpointSelector":{},"ingress":[{"ports":[{"protocol":"GRE"}]}]}`); !slices.Equal(protos, want) {
			t.Errorf("%s protocol enum %v, parser %v", sec.name, protos, want)
		}
		ents := enum(peer["properties"].(obj)["entities"].(obj)["items"].(obj))
		if want := parserFields(t, `{"endpointSelector":{},"ingress":[{"from":[{"entities":["galaxy"]}]}]}`); !slices.Equal(ents, want) {
			t.Errorf("%s entities enum %v, parser %v", sec.name, ents, want)
		}
		ops := enum(peerExprs["properties"].(obj)["operator"].(obj))
		if want := parserFields(t, `{"endpointSelector":{"matchExpressions":[{"key":"a","operator":"Is"}]},"ingress":[]}`); !slices.Equal(ops, want) {
			t.Errorf("%s operator enum %v, parser %v", sec.name, ops, want)
		}
	}
}

// validate is the part of the API server's schema validation a test can
// do without it: types, required fields, enums, bounds, and unknown
// fields (which the API server would refuse or prune). It does not
// evaluate the x-kubernetes-validations (CEL) rules.
func validate(s obj, v any, path string) []string {
	if s["x-kubernetes-int-or-string"] == true {
		if f, ok := v.(float64); ok && f == math.Trunc(f) {
			return nil
		}
		if _, ok := v.(string); ok {
			return nil
		}
		return []string{path + ": not an integer or string"}
	}
	var errs []string
	switch s["type"] {
	case "object":
		m, ok := v.(obj)
		if !ok {
			return []string{path + ": not an object"}
		}
		if path == ".metadata" {
			return nil // the API server's own
		}
		props, _ := s["properties"].(obj)
		for k, x := range m {
			switch {
			case props[k] != nil:
				errs = append(errs, validate(props[k].(obj), x, path+"."+k)...)
			case s["additionalProperties"] != nil:
				errs = append(errs, validate(s["additionalProperties"].(obj), x, path+"."+k)...)
			default:
				errs = append(errs, path+": unknown field "+k)
			}
		}
		if req, ok := s["required"].([]any); ok {
			for _, r := range req {
				if _, ok := m[r.(string)]; !ok {
					errs = append(errs, path+": missing "+r.(string))
				}
			}
		}
		if mp, ok := s["maxProperties"].(float64); ok && float64(len(m)) > mp {
			errs = append(errs, path+": too many properties")
		}
	case "array":
		l, ok := v.([]any)
		if !ok {
			return []string{path + ": not an array"}
		}
		if mi, ok := s["maxItems"].(float64); ok && float64(len(l)) > mi {
			errs = append(errs, path+": too many items")
		}
		if mi, ok := s["minItems"].(float64); ok && float64(len(l)) < mi {
			errs = append(errs, path+": too few items")
		}
		for i, x := range l {
			errs = append(errs, validate(s["items"].(obj), x, fmt.Sprintf("%s[%d]", path, i))...)
		}
	case "string":
		str, ok := v.(string)
		if !ok {
			return []string{path + ": not a string"}
		}
		if e, ok := s["enum"].([]any); ok && !slices.Contains(e, any(str)) {
			errs = append(errs, path+": not in enum")
		}
		if ml, ok := s["maxLength"].(float64); ok && float64(len(str)) > ml {
			errs = append(errs, path+": too long")
		}
	case "integer":
		f, ok := v.(float64)
		if !ok || f != math.Trunc(f) {
			return []string{path + ": not an integer"}
		}
		if m, ok := s["minimum"].(float64); ok && f < m {
			errs = append(errs, path+": below minimum")
		}
		if m, ok := s["maximum"].(float64); ok && f > m {
			errs = append(errs, path+": above maximum")
		}
	default:
		errs = append(errs, fmt.Sprintf("%s: schema type %v not handled", path, s["type"]))
	}
	return errs
}

// TestCRDAcceptsWeftSpecs checks that specs Weft accepts pass the schema
// untouched and that type mistakes are refused by it.
func TestCRDAcceptsWeftSpecs(t *testing.T) {
	schema := at(t, loadCRD(t), "spec", "versions", 0, "schema", "openAPIV3Schema").(obj)
	good := []string{
		`{endpointSelector: {matchLabels: {"k8s:app": db}}, ingress: [{from: [{matchLabels: {app: web}}, {entities: [host, remote-node]}], ports: [{port: 5432}, {port: metrics, protocol: TCP}, {port: 30000, endPort: 32767}]}], ingressDeny: [{from: [{entities: [world]}]}]}`,
		`{endpointSelector: {}, egress: []}`,
		`{endpointSelector: {matchExpressions: [{key: env, operator: In, values: [prod, dev]}, {key: tier, operator: NotIn, values: [a]}, {key: x, operator: Exists}, {key: "y", operator: DoesNotExist}]}, egressDeny: [{to: [{cidr: "2001:db8::/32", except: ["2001:db8:1::/48"]}], ports: [{protocol: UDP}, {protocol: ICMP}, {port: 53, protocol: ANY}, {protocol: SCTP}]}]}`,
		`{endpointSelector: {matchLabels: {"k8s:io.kubernetes.pod.namespace": prod}}, ingress: [{}], egress: [{to: [{}, {entities: [mesh, all]}, {cidr: "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.0/120"}]}]}`,
	}
	for _, g := range good {
		var spec any
		if err := yaml.Unmarshal([]byte(g), &spec); err != nil {
			t.Fatal(err)
		}
		js, _ := json.Marshal(spec)
		if _, err := FromWeftPolicy("sample", js); err != nil {
			t.Errorf("sample is not a valid Weft spec: %v\n%s", err, g)
			continue
		}
		cr := obj{"apiVersion": "weft.dev/v1", "kind": "WeftPolicy", "metadata": obj{"name": "sample"}, "spec": spec}
		if errs := validate(schema, cr, ""); len(errs) > 0 {
			t.Errorf("the CRD refuses a valid Weft spec: %v\n%s", errs, g)
		}
	}
	for _, b := range []struct{ spec, want string }{
		{`{endpointSelector: {}, ingres: []}`, "unknown field ingres"},
		{`{ingress: []}`, "missing endpointSelector"},
		{`{endpointSelector: {matchLabels: {debug: true}}, ingress: []}`, "matchLabels.debug: not a string"},
		{`{endpointSelector: {}, ingress: [{ports: [{protocol: tcp}]}]}`, "protocol: not in enum"},
		{`{endpointSelector: {}, ingress: [{from: [{entities: [galaxy]}]}]}`, "not in enum"},
		{`{endpointSelector: {}, ingress: [{ports: [{port: 80, endPort: 70000}]}]}`, "above maximum"},
		{`{endpointSelector: {}, ingress: [{ports: [{port: 1.5}]}]}`, "not an integer or string"},
		{`{endpointSelector: {}, ingress: [{to: [{}]}]}`, "unknown field to"},
	} {
		var spec any
		if err := yaml.Unmarshal([]byte(b.spec), &spec); err != nil {
			t.Fatal(err)
		}
		cr := obj{"apiVersion": "weft.dev/v1", "kind": "WeftPolicy", "metadata": obj{"name": "bad"}, "spec": spec}
		if errs := validate(schema, cr, ""); !strings.Contains(strings.Join(errs, "; "), b.want) {
			t.Errorf("%s: schema errors %v, want %q", b.spec, errs, b.want)
		}
	}
}
