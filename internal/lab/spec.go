package lab

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strings"

	"sigs.k8s.io/yaml"
)

// Spec is a lab topology: sites, each a LAN behind a router, with nodes and
// their workloads. It is data (YAML or JSON) so a topology can live in a file
// and be reviewed like code.
type Spec struct {
	Name  string     `json:"name"`
	Sites []SiteSpec `json:"sites"`
}

// SiteSpec is one site: a LAN (a bridge in the site router's namespace) and
// the nodes on it. A NAT site masquerades its LAN behind the router's
// internet address, so its nodes reach out but nobody reaches them.
//
// In YAML and JSON the kind is one field, nat: eim, symmetric, true (eim),
// or false, none or nothing (public). MarshalJSON writes the kind's name.
type SiteSpec struct {
	Name string
	// NATKind is how the router translates the LAN: NATNone (a public
	// site), NATEIM or NATSymmetric. Empty means: as NAT says.
	NATKind NATKind
	// NAT is the field from before NAT kinds: true with an empty NATKind
	// is NATEIM. Specs written in Go still set it (SiteSpec{NAT: true});
	// ParseSpec and Up set both fields, so either can be read.
	NAT   bool
	Nodes []NodeSpec
}

// NATKind is how a NAT site's router maps its LAN's sockets to ports of its
// internet address: the property that decides whether two nodes behind NAT
// can reach each other directly (UDP hole punching) or need a relay.
type NATKind string

const (
	// NATNone is a public site: the internet routes its LAN to its router
	// and nothing is translated.
	NATNone NATKind = "none"
	// NATEIM is endpoint-independent mapping (RFC 4787): one inner socket
	// keeps one external port whatever it sends to, so the address a third
	// party saw is the one every peer can use: hole punching works. This
	// is nft's plain masquerade (it keeps the inner port when it is free).
	NATEIM NATKind = "eim"
	// NATSymmetric gives every destination of an inner socket a new
	// random external port (address-and-port-dependent mapping, nft
	// masquerade random), so the port a third party saw is of no use to
	// anybody else: hole punching fails and only a relay connects two
	// nodes behind such NATs.
	NATSymmetric NATKind = "symmetric"
)

// NATKinds are the kinds, in the order the help lists them.
var NATKinds = []NATKind{NATNone, NATEIM, NATSymmetric}

// natKindValues is what the nat field accepts, for error messages.
const natKindValues = "eim, symmetric, true (the same as eim), or false or none (a public site)"

// ParseNATKind reads a NAT kind's name: none, eim or symmetric.
func ParseNATKind(s string) (NATKind, error) {
	for _, k := range NATKinds {
		if s == string(k) {
			return k, nil
		}
	}
	return "", fmt.Errorf("%q is not a NAT kind: use %s", s, natKindValues)
}

// natKindOf reads the nat field of a site: a bool (the form from before
// NAT kinds) or a kind's name.
func natKindOf(v any) (NATKind, error) {
	switch v := v.(type) {
	case bool:
		if v {
			return NATEIM, nil
		}
		return NATNone, nil
	case string:
		return ParseNATKind(v)
	case nil:
		return NATNone, nil
	}
	return "", fmt.Errorf("must be %s, got %s", natKindValues, describe(v))
}

// Kind is the site's NAT kind: NATKind, or when that is empty NATEIM if NAT
// is set and NATNone if not.
func (s SiteSpec) Kind() NATKind {
	switch {
	case s.NATKind != "":
		return s.NATKind
	case s.NAT:
		return NATEIM
	}
	return NATNone
}

// siteJSON is a site as YAML and JSON spell it: the NAT kind in one field.
type siteJSON struct {
	Name  string          `json:"name"`
	NAT   json.RawMessage `json:"nat,omitempty"`
	Nodes []NodeSpec      `json:"nodes"`
}

// MarshalJSON writes the NAT kind as nat: eim or nat: symmetric (nothing
// for a public site), which ParseSpec and UnmarshalJSON read back.
func (s SiteSpec) MarshalJSON() ([]byte, error) {
	j := siteJSON{Name: s.Name, Nodes: s.Nodes}
	if k := s.Kind(); k != NATNone {
		j.NAT, _ = json.Marshal(string(k))
	}
	return json.Marshal(j)
}

// UnmarshalJSON reads a site (a lab's state file holds its spec as JSON),
// nat as a kind's name or as the bool of state files written before NAT
// kinds. Both NATKind and NAT are set.
func (s *SiteSpec) UnmarshalJSON(data []byte) error {
	var j siteJSON
	if err := json.Unmarshal(data, &j); err != nil {
		return err
	}
	kind := NATNone
	if len(j.NAT) > 0 {
		var v any
		if err := json.Unmarshal(j.NAT, &v); err != nil {
			return err
		}
		k, err := natKindOf(v)
		if err != nil {
			return fmt.Errorf("site %q: nat: %w", j.Name, err)
		}
		kind = k
	}
	*s = SiteSpec{Name: j.Name, NATKind: kind, NAT: kind != NATNone, Nodes: j.Nodes}
	return nil
}

// NodeSpec is one node (a Kubernetes node or a VM): a namespace on its
// site's LAN.
type NodeSpec struct {
	Name      string         `json:"name"`
	Workloads []WorkloadSpec `json:"workloads,omitempty"`
}

// WorkloadSpec is one workload: a namespace joined to its node by a veth
// pair. The lab assigns it no address: that is the agent's job.
type WorkloadSpec struct {
	Name string `json:"name"`
}

// Limits of a spec. They follow from the addressing plan (site i's LAN is
// 198.18.<i+1>.0/24 with nodes from .10; routers share 198.19.0.0/24) and
// from keeping a lab something one machine can hold.
const (
	MaxSites            = 64
	MaxNodesPerSite     = 200
	MaxWorkloadsPerNode = 64
	MaxNamespaces       = 1024
	maxLabName          = 16
	maxEntityName       = 32
)

// ErrInvalidSpec is wrapped by every spec validation error.
var ErrInvalidSpec = errors.New("lab: invalid spec")

// SpecError names the field of a spec that is wrong and what is wrong
// with it, e.g. `topo.yaml: sites[1].nodes[0].name: "B1" must be ...`.
type SpecError struct {
	File    string // the file the spec came from; empty for a spec built in code
	Field   string // path of the field, e.g. sites[1].nodes[0].name
	Problem string
}

func (e *SpecError) Error() string {
	var b strings.Builder
	if e.File != "" {
		b.WriteString(e.File)
		b.WriteString(": ")
	}
	if e.Field != "" {
		b.WriteString(e.Field)
		b.WriteString(": ")
	}
	b.WriteString(e.Problem)
	return b.String()
}

func (e *SpecError) Unwrap() error { return ErrInvalidSpec }

var (
	labNameRE    = regexp.MustCompile(`^[a-z][a-z0-9]*$`)
	entityNameRE = regexp.MustCompile(`^[a-z]([a-z0-9-]*[a-z0-9])?$`)
)

// Reserved entity names: the internet namespace is named "internet".
const internetName = "internet"

// RouterName is the name of a site's router (its namespace is
// wl-<lab>-<site>-router); `meshctl lab exec` accepts it like a node name.
func RouterName(site string) string { return site + "-router" }

// ParseSpec decodes a YAML (or JSON) topology and validates it. file is only
// used in error messages. Unknown fields, wrong types and invalid values are
// refused with the path of the field and the problem.
func ParseSpec(data []byte, file string) (*Spec, error) {
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, &SpecError{File: file, Problem: "the spec is empty: it needs a name and a list of sites (see docs/lab.md)"}
	}
	js, err := yaml.YAMLToJSON(data)
	if err != nil {
		return nil, &SpecError{File: file, Problem: "not valid YAML: " + strings.TrimPrefix(err.Error(), "error converting YAML to JSON: ")}
	}
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.UseNumber()
	var raw any
	if err := dec.Decode(&raw); err != nil {
		return nil, &SpecError{File: file, Problem: "not valid YAML: " + err.Error()}
	}
	d := decoder{file: file}
	spec := d.spec(raw)
	if d.err != nil {
		return nil, d.err
	}
	if err := spec.validate(file); err != nil {
		return nil, err
	}
	return spec, nil
}

// decoder walks the generic form of the document so that every error can
// name the exact field (encoding/json reports neither the path of an
// unknown field nor list indexes). It records the first error only.
type decoder struct {
	file string
	err  error
}

func (d *decoder) fail(field, format string, args ...any) {
	if d.err == nil {
		d.err = &SpecError{File: d.file, Field: field, Problem: fmt.Sprintf(format, args...)}
	}
}

func describe(v any) string {
	switch v := v.(type) {
	case nil:
		return "nothing (null)"
	case string:
		return fmt.Sprintf("the string %q", v)
	case json.Number:
		return "the number " + v.String()
	case bool:
		return fmt.Sprintf("%t", v)
	case []any:
		return "a list"
	case map[string]any:
		return "a mapping"
	}
	return fmt.Sprintf("%T", v)
}

// object checks that v is a mapping with only the known keys.
func (d *decoder) object(path string, v any, known ...string) map[string]any {
	m, ok := v.(map[string]any)
	if !ok {
		what := "the spec"
		if path != "" {
			what = path
		}
		d.fail(path, "%s must be a mapping with the fields %s, got %s", what, strings.Join(known, ", "), describe(v))
		return nil
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		found := false
		for _, kk := range known {
			if k == kk {
				found = true
			}
		}
		if !found {
			d.fail(join(path, k), "unknown field (the fields here are %s)", strings.Join(known, ", "))
		}
	}
	return m
}

func (d *decoder) str(path string, v any) string {
	s, ok := v.(string)
	if !ok {
		d.fail(path, "must be a string, got %s", describe(v))
	}
	return s
}

func (d *decoder) list(path string, v any) []any {
	if v == nil {
		return nil
	}
	l, ok := v.([]any)
	if !ok {
		d.fail(path, "must be a list, got %s", describe(v))
	}
	return l
}

func join(path, field string) string {
	if path == "" {
		return field
	}
	return path + "." + field
}

func (d *decoder) spec(v any) *Spec {
	m := d.object("", v, "name", "sites")
	s := &Spec{}
	if m == nil {
		return s
	}
	if n, ok := m["name"]; ok {
		s.Name = d.str("name", n)
	}
	for i, sv := range d.list("sites", m["sites"]) {
		s.Sites = append(s.Sites, d.site(fmt.Sprintf("sites[%d]", i), sv))
	}
	return s
}

func (d *decoder) site(path string, v any) SiteSpec {
	var s SiteSpec
	m := d.object(path, v, "name", "nat", "nodes")
	if m == nil {
		return s
	}
	if n, ok := m["name"]; ok {
		s.Name = d.str(join(path, "name"), n)
	}
	s.NATKind = NATNone
	if n, ok := m["nat"]; ok {
		k, err := natKindOf(n)
		if err != nil {
			d.fail(join(path, "nat"), "%s", err)
		}
		s.NATKind = k
	}
	s.NAT = s.NATKind == NATEIM || s.NATKind == NATSymmetric
	for i, nv := range d.list(join(path, "nodes"), m["nodes"]) {
		s.Nodes = append(s.Nodes, d.node(fmt.Sprintf("%s.nodes[%d]", path, i), nv))
	}
	return s
}

func (d *decoder) node(path string, v any) NodeSpec {
	var n NodeSpec
	m := d.object(path, v, "name", "workloads")
	if m == nil {
		return n
	}
	if nv, ok := m["name"]; ok {
		n.Name = d.str(join(path, "name"), nv)
	}
	for i, wv := range d.list(join(path, "workloads"), m["workloads"]) {
		wpath := fmt.Sprintf("%s.workloads[%d]", path, i)
		var w WorkloadSpec
		if wm := d.object(wpath, wv, "name"); wm != nil {
			if x, ok := wm["name"]; ok {
				w.Name = d.str(join(wpath, "name"), x)
			}
		}
		n.Workloads = append(n.Workloads, w)
	}
	return n
}

// Validate checks a spec built in code (ParseSpec already validates).
func (s *Spec) Validate() error { return s.validate("") }

func (s *Spec) validate(file string) error {
	fail := func(field, format string, args ...any) error {
		return &SpecError{File: file, Field: field, Problem: fmt.Sprintf(format, args...)}
	}
	if s == nil {
		return fail("", "no spec")
	}
	switch {
	case s.Name == "":
		return fail("name", "missing: every lab needs a name (it prefixes its namespaces: wl-<name>-...)")
	case len(s.Name) > maxLabName || !labNameRE.MatchString(s.Name):
		return fail("name", "%q is not a valid lab name: use 1 to %d lowercase letters and digits, starting with a letter (no dashes: the name is the namespace prefix wl-<name>-, which must not overlap another lab's)", s.Name, maxLabName)
	case len(s.Sites) == 0:
		return fail("sites", "a lab needs at least one site")
	case len(s.Sites) > MaxSites:
		return fail("sites", "%d sites, at most %d are supported", len(s.Sites), MaxSites)
	}
	// Every name becomes a namespace name or an exec target, so names are
	// unique across sites, routers, nodes and workloads.
	owner := map[string]string{internetName: "the internet namespace"}
	claim := func(field, name string, max int) error {
		if name == "" {
			return fail(field, "missing: give it a name")
		}
		if len(name) > max || !entityNameRE.MatchString(name) {
			return fail(field, "%q is not a valid name: use 1 to %d lowercase letters, digits and dashes, starting with a letter and not ending with a dash", name, max)
		}
		if prev, ok := owner[name]; ok {
			return fail(field, "name %q is already used by %s: names must be unique across sites, routers, nodes and workloads", name, prev)
		}
		owner[name] = field
		return nil
	}
	namespaces := 1
	for i, site := range s.Sites {
		p := fmt.Sprintf("sites[%d]", i)
		// The router is named after the site and must fit the same limit.
		if err := claim(p+".name", site.Name, maxEntityName-len(RouterName(""))); err != nil {
			return err
		}
		if prev, ok := owner[RouterName(site.Name)]; ok {
			return fail(p+".name", "the router of site %q would be named %q, which is already used by %s", site.Name, RouterName(site.Name), prev)
		}
		owner[RouterName(site.Name)] = "the router of " + p
		if err := site.validateNAT(); err != nil {
			return fail(p+".nat", "%s", err)
		}
		if len(site.Nodes) == 0 {
			return fail(p+".nodes", "site %q has no nodes: a site needs at least one", site.Name)
		}
		if len(site.Nodes) > MaxNodesPerSite {
			return fail(p+".nodes", "%d nodes, at most %d per site are supported", len(site.Nodes), MaxNodesPerSite)
		}
		namespaces++
		for j, node := range site.Nodes {
			np := fmt.Sprintf("%s.nodes[%d]", p, j)
			if err := claim(np+".name", node.Name, maxEntityName); err != nil {
				return err
			}
			if len(node.Workloads) > MaxWorkloadsPerNode {
				return fail(np+".workloads", "%d workloads, at most %d per node are supported", len(node.Workloads), MaxWorkloadsPerNode)
			}
			namespaces += 1 + len(node.Workloads)
			for k, w := range node.Workloads {
				if err := claim(fmt.Sprintf("%s.workloads[%d].name", np, k), w.Name, maxEntityName); err != nil {
					return err
				}
			}
		}
	}
	if namespaces > MaxNamespaces {
		return fail("sites", "the lab would have %d namespaces, at most %d are supported", namespaces, MaxNamespaces)
	}
	return nil
}

func (s SiteSpec) validateNAT() error {
	if s.NATKind == "" {
		return nil
	}
	if _, err := ParseNATKind(string(s.NATKind)); err != nil {
		return err
	}
	if s.NAT && s.NATKind == NATNone {
		return fmt.Errorf("NAT is true but NATKind is %q: set NATKind alone (%s, %s or %s)", NATNone, NATNone, NATEIM, NATSymmetric)
	}
	return nil
}

// Generate builds the spec of a regular lab: sites site1..siteN with
// nodesPerSite nodes each (site1-n1, site1-n2, ...). With natSite the last
// site is behind NAT (NATEIM; set its NATKind for another kind). The result is not validated: Up (or Validate) reports
// out-of-range counts.
func Generate(name string, sites, nodesPerSite int, natSite bool) *Spec {
	s := &Spec{Name: name}
	for i := 1; i <= sites; i++ {
		site := SiteSpec{Name: fmt.Sprintf("site%d", i), NATKind: NATNone}
		if natSite && i == sites {
			site.NATKind, site.NAT = NATEIM, true
		}
		for j := 1; j <= nodesPerSite; j++ {
			site.Nodes = append(site.Nodes, NodeSpec{Name: fmt.Sprintf("%s-n%d", site.Name, j)})
		}
		s.Sites = append(s.Sites, site)
	}
	return s
}

// AddWorkloads gives every node perNode more workloads named
// <node>-w1, <node>-w2, ...
func (s *Spec) AddWorkloads(perNode int) {
	for i := range s.Sites {
		for j := range s.Sites[i].Nodes {
			n := &s.Sites[i].Nodes[j]
			base := len(n.Workloads)
			for k := 1; k <= perNode; k++ {
				n.Workloads = append(n.Workloads, WorkloadSpec{Name: fmt.Sprintf("%s-w%d", n.Name, base+k)})
			}
		}
	}
}
