package policy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/weftmesh/weft/identity"
	"github.com/weftmesh/weft/internal/names"
)

// ParseError is a refused document: where (file, line, column, and which
// document of a file of several) and why.
type ParseError struct {
	File   string
	Line   int
	Column int
	// Document is the document's position in its file (1 for the first),
	// set when the file holds more than one.
	Document int
	Err      error
}

func (e *ParseError) Error() string {
	f := e.File
	if f == "" {
		f = "<input>"
	}
	doc := ""
	if e.Document > 0 {
		doc = fmt.Sprintf("document %d: ", e.Document)
	}
	if e.Line == 0 {
		return fmt.Sprintf("%s: %s%v", f, doc, e.Err)
	}
	return fmt.Sprintf("%s:%d:%d: %s%v", f, e.Line, e.Column, doc, e.Err)
}

func (e *ParseError) Unwrap() error { return e.Err }

// maxErrors bounds how many problems one Parse reports.
const maxErrors = 20

// MaxDocumentBytes is the largest document (one policy) the mesh stores:
// the same bound as the store's record (kvstore.MaxPolicyDocument), checked
// here so that a file the parser accepts is one the store accepts.
const MaxDocumentBytes = 512 << 10

// Parse reads every document of a YAML (or JSON) file. It is all or
// nothing: on any error it returns no policy and an error that joins one
// *ParseError per bad document (file, line, reason). Empty documents are
// skipped; two documents with one name are an error.
//
// Each policy keeps the text of its document as written (Source) and the
// line it starts on (SourceLine), so that what is stored is what the user
// wrote and lines read back from the store are lines of the file.
func Parse(file string, data []byte) ([]*Policy, error) {
	return parse(file, 1, data)
}

// ParseSource parses one stored document: its text as written, taken
// from line `line` of file (Policy.Source, .SourceLine). Errors and rule
// lines are positions in that file.
func ParseSource(file string, line int, data []byte) (*Policy, error) {
	ps, err := parse(file, max(line, 1), data)
	if err != nil {
		return nil, err
	}
	if len(ps) != 1 {
		return nil, &ParseError{File: file, Line: line, Err: fmt.Errorf("%w: expected one policy document, found %d", ErrInvalid, len(ps))}
	}
	return ps[0], nil
}

func parse(file string, firstLine int, data []byte) ([]*Policy, error) {
	chunks := splitStream(data)
	many := 0
	for _, c := range chunks {
		if c.content {
			many++
		}
	}
	var (
		out  []*Policy
		errs []error
		seen = map[string]int{}
		doc  = 0
	)
	for _, c := range chunks {
		if len(errs) >= maxErrors {
			break
		}
		if !c.content {
			continue
		}
		doc++
		offset := firstLine - 1 + c.line - 1
		fail := func(err error) {
			var pe *ParseError
			if errors.As(err, &pe) && many > 1 {
				pe.Document = doc
			}
			errs = append(errs, err)
		}
		p, err := parseChunk(file, offset, c.text)
		if err != nil {
			fail(err)
			continue
		}
		if p == nil { // only comments, or an explicitly empty document
			continue
		}
		if len(c.text) > MaxDocumentBytes {
			fail(&ParseError{File: file, Line: p.Line, Column: 1,
				Err: fmt.Errorf("%w: policy %q is %d bytes long, at most %d are stored: split it into several policies", ErrInvalid, p.Name, len(c.text), MaxDocumentBytes)})
			continue
		}
		if prev, dup := seen[p.Name]; dup {
			fail(&ParseError{File: file, Line: p.Line, Column: 1,
				Err: fmt.Errorf("%w: policy %q is also defined on line %d (names must be unique)", ErrInvalid, p.Name, prev)})
			continue
		}
		seen[p.Name] = p.Line
		p.Source, p.SourceLine = string(c.text), offset+1
		out = append(out, p)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return out, nil
}

// parseChunk decodes the one document of a chunk; offset is added to every
// line so positions are those of the file. A nil policy and no error mean
// the chunk holds no document.
func parseChunk(file string, offset int, text []byte) (*Policy, error) {
	dec := yaml.NewDecoder(bytes.NewReader(text))
	var p *Policy
	for {
		var doc yaml.Node
		err := dec.Decode(&doc)
		if errors.Is(err, io.EOF) {
			return p, nil
		}
		if err != nil {
			return nil, syntaxError(file, offset, err)
		}
		if len(doc.Content) == 0 || isNull(doc.Content[0]) {
			continue
		}
		shiftLines(&doc, offset)
		if p != nil {
			return nil, &ParseError{File: file, Line: doc.Content[0].Line, Column: 1,
				Err: fmt.Errorf("%w: a second document without a --- line before it: separate documents with ---", ErrInvalid)}
		}
		d := &decoder{file: file}
		p = d.policy(doc.Content[0])
		if d.err != nil {
			return nil, d.err
		}
	}
}

// shiftLines adds offset to the line of every node of a document (each
// node once: aliases are not followed).
func shiftLines(n *yaml.Node, offset int) {
	if offset == 0 {
		return
	}
	n.Line += offset
	for _, c := range n.Content {
		shiftLines(c, offset)
	}
}

// chunk is one document's text in a YAML stream.
type chunk struct {
	text    []byte
	line    int  // the chunk's first line, 1-based
	content bool // it holds more than comments, blank lines and directives
}

// splitStream cuts a YAML stream into its documents' texts at the "---"
// lines that start documents. YAML forbids such a line inside a document
// (even in a block scalar), so the cut never splits one. Comments and
// directives before a marker stay with the document that follows.
func splitStream(data []byte) []chunk {
	var (
		out  []chunk
		cur  = chunk{line: 1}
		line = 1
	)
	for len(data) > 0 {
		l := data
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			l = data[:i+1]
		}
		data = data[len(l):]
		t := bytes.TrimRight(l, "\r\n")
		if isDocumentStart(t) && cur.content {
			out = append(out, cur)
			cur = chunk{line: line}
		}
		cur.text = append(cur.text, l...)
		if !cur.content && !isPreamble(t) {
			cur.content = true
		}
		line++
	}
	return append(out, cur)
}

func isDocumentStart(l []byte) bool {
	return bytes.Equal(l, []byte("---")) || bytes.HasPrefix(l, []byte("--- ")) || bytes.HasPrefix(l, []byte("---\t"))
}

// isPreamble reports whether a line may precede a document's content:
// blank, a comment, a directive, or the marker itself.
func isPreamble(l []byte) bool {
	if isDocumentStart(l) {
		rest := bytes.TrimSpace(l[3:])
		return len(rest) == 0 || rest[0] == '#'
	}
	t := bytes.TrimSpace(l)
	return len(t) == 0 || t[0] == '#' || t[0] == '%'
}

// ParseOne parses data that must hold exactly one policy document.
func ParseOne(file string, data []byte) (*Policy, error) {
	return ParseSource(file, 1, data)
}

// ParseSpec parses the spec of a policy whose name comes from elsewhere,
// such as a Kubernetes WeftPolicy object, whose .spec is a Weft policy's
// spec: the fields, checks and messages are those of a document's spec
// (`meshctl policy apply`). data is YAML or JSON; name may be a stored or
// an imported policy name. Errors are *ParseError with file and positions
// in data.
func ParseSpec(file, name string, data []byte) (*Policy, error) {
	if err := validatePolicyName(name); err != nil {
		return nil, &ParseError{File: file, Err: fmt.Errorf("%w: %v", ErrInvalid, err)}
	}
	if len(data) > MaxDocumentBytes {
		return nil, &ParseError{File: file, Err: fmt.Errorf("%w: policy %q: its spec is %d bytes long, at most %d are stored: split it into several policies", ErrInvalid, name, len(data), MaxDocumentBytes)}
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, &ParseError{File: file, Err: fmt.Errorf("%w: the spec is empty (a spec has endpointSelector and at least one of ingress, egress, ingressDeny, egressDeny)", ErrInvalid)}
		}
		return nil, syntaxError(file, 0, err)
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return nil, &ParseError{File: file, Line: extra.Line, Column: 1, Err: fmt.Errorf("%w: more than one spec", ErrInvalid)}
	}
	if len(doc.Content) == 0 || isNull(doc.Content[0]) {
		return nil, &ParseError{File: file, Err: fmt.Errorf("%w: the spec is empty (null)", ErrInvalid)}
	}
	n := doc.Content[0]
	d := &decoder{file: file}
	p := d.spec(&Policy{Name: name, File: file, Line: n.Line}, n)
	if d.err != nil {
		return nil, d.err
	}
	return p, nil
}

func syntaxError(file string, offset int, err error) error {
	// yaml.v3 reports "yaml: line N: reason"; keep the line for the user.
	msg := err.Error()
	line := 0
	if rest, ok := strings.CutPrefix(msg, "yaml: line "); ok {
		if n, after, ok := strings.Cut(rest, ":"); ok {
			if v, convErr := strconv.Atoi(n); convErr == nil {
				line, msg = v+offset, strings.TrimSpace(after)
			}
		}
	}
	return &ParseError{File: file, Line: line, Column: 1, Err: fmt.Errorf("%w: YAML syntax: %s", ErrInvalid, msg)}
}

// decoder walks one document's node tree and keeps the first error.
type decoder struct {
	file string
	err  error
}

func (d *decoder) fail(n *yaml.Node, format string, args ...any) {
	if d.err != nil {
		return
	}
	d.err = &ParseError{File: d.file, Line: n.Line, Column: n.Column, Err: fmt.Errorf("%w: "+format, append([]any{ErrInvalid}, args...)...)}
}

// failErr records an error from the identity package, keeping its position.
func (d *decoder) failErr(n *yaml.Node, err error) {
	if d.err != nil {
		return
	}
	line, col := n.Line, n.Column
	if pe, ok := identity.IsPositionError(err); ok {
		line, col, err = pe.Line, pe.Column, pe.Err
	}
	d.err = &ParseError{File: d.file, Line: line, Column: col, Err: fmt.Errorf("%w: %w", ErrInvalid, err)}
}

// fields iterates a mapping strictly: every key must be one of allowed,
// none twice. It returns key → value node (aliases resolved).
func (d *decoder) fields(n *yaml.Node, where string, allowed ...string) map[string]*yaml.Node {
	n = deref(n)
	if d.err != nil {
		return nil
	}
	if n.Kind != yaml.MappingNode {
		d.fail(n, "%s must be a mapping, not %s", where, describe(n))
		return nil
	}
	out := make(map[string]*yaml.Node, len(n.Content)/2)
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], deref(n.Content[i+1])
		if k.Kind != yaml.ScalarNode {
			d.fail(k, "%s: field names must be plain strings", where)
			return nil
		}
		if !slices.Contains(allowed, k.Value) {
			d.fail(k, "unknown field %q in %s (allowed: %s)", k.Value, where, strings.Join(allowed, ", "))
			return nil
		}
		if _, dup := out[k.Value]; dup {
			d.fail(k, "field %q given twice in %s", k.Value, where)
			return nil
		}
		out[k.Value] = v
	}
	return out
}

func (d *decoder) str(n *yaml.Node, what string) string {
	if d.err != nil {
		return ""
	}
	s, err := identity.StringScalar(n, what)
	if err != nil {
		d.failErr(n, err)
	}
	return s
}

func (d *decoder) seq(n *yaml.Node, what string) []*yaml.Node {
	if d.err != nil {
		return nil
	}
	if n.Kind != yaml.SequenceNode {
		d.fail(n, "%s must be a list, not %s", what, describe(n))
		return nil
	}
	out := make([]*yaml.Node, len(n.Content))
	for i, c := range n.Content {
		out[i] = deref(c)
	}
	return out
}

func (d *decoder) policy(n *yaml.Node) *Policy {
	p := &Policy{File: d.file, Line: n.Line}
	top := d.fields(n, "the policy document", "apiVersion", "kind", "metadata", "spec")
	if d.err != nil {
		return nil
	}
	for _, req := range []string{"apiVersion", "kind", "metadata", "spec"} {
		if top[req] == nil {
			d.fail(n, "missing %s (a policy has apiVersion: %s, kind: %s, metadata, spec)", req, APIVersion, Kind)
			return nil
		}
	}
	if v := d.str(top["apiVersion"], "apiVersion"); d.err == nil && v != APIVersion {
		d.fail(top["apiVersion"], "apiVersion %q is not supported (use %s)", v, APIVersion)
	}
	if v := d.str(top["kind"], "kind"); d.err == nil && v != Kind {
		d.fail(top["kind"], "kind %q is not a policy (use %s)", v, Kind)
	}
	meta := d.fields(top["metadata"], "metadata", "name", "description")
	if d.err != nil {
		return nil
	}
	if meta["name"] == nil {
		d.fail(top["metadata"], "metadata.name is missing")
		return nil
	}
	p.Name = d.str(meta["name"], "metadata.name")
	if d.err == nil {
		if err := ValidateName(p.Name); err != nil {
			d.fail(meta["name"], "%v", err)
		}
	}
	if meta["description"] != nil {
		p.Description = d.str(meta["description"], "metadata.description")
	}
	if d.err != nil {
		return nil
	}
	return d.spec(p, top["spec"])
}

// spec decodes a policy's spec into p.
func (d *decoder) spec(p *Policy, n *yaml.Node) *Policy {
	spec := d.fields(n, "spec", "endpointSelector", "ingress", "egress", "ingressDeny", "egressDeny")
	if d.err != nil {
		return nil
	}
	es := spec["endpointSelector"]
	if es == nil {
		d.fail(n, "spec.endpointSelector is missing (write endpointSelector: {} to select every endpoint)")
		return nil
	}
	sel, err := identity.SelectorFromNode(es)
	if err != nil {
		d.failErr(es, fmt.Errorf("spec.endpointSelector: %w", err))
		return nil
	}
	p.EndpointSelector = sel
	p.Ingress = d.rules(spec["ingress"], "ingress", "from")
	p.Egress = d.rules(spec["egress"], "egress", "to")
	p.IngressDeny = d.rules(spec["ingressDeny"], "ingressDeny", "from")
	p.EgressDeny = d.rules(spec["egressDeny"], "egressDeny", "to")
	if d.err != nil {
		return nil
	}
	if p.Ingress == nil && p.Egress == nil && p.IngressDeny == nil && p.EgressDeny == nil {
		d.fail(n, "spec has no ingress, egress, ingressDeny or egressDeny section: the policy would do nothing")
		return nil
	}
	return p
}

// rules decodes a rule list. An absent section stays nil; a present one,
// even empty, is non-nil: that is what isolates an endpoint.
func (d *decoder) rules(n *yaml.Node, section, peerField string) []Rule {
	if n == nil || d.err != nil {
		return nil
	}
	if isNull(n) {
		d.fail(n, "%s is empty (null): write `%s: []` to deny everything in that direction, or remove the line", section, section)
		return nil
	}
	items := d.seq(n, section)
	out := make([]Rule, 0, len(items))
	for i, item := range items {
		where := fmt.Sprintf("%s[%d]", section, i)
		f := d.fields(item, where, peerField, "ports")
		if d.err != nil {
			return nil
		}
		r := Rule{Line: item.Line}
		if pn := f[peerField]; pn != nil && !isNull(pn) {
			for j, peer := range d.seq(pn, where+"."+peerField) {
				r.Peers = append(r.Peers, d.peer(peer, fmt.Sprintf("%s.%s[%d]", where, peerField, j)))
			}
		}
		if pn := f["ports"]; pn != nil && !isNull(pn) {
			for j, port := range d.seq(pn, where+".ports") {
				r.Ports = append(r.Ports, d.port(port, fmt.Sprintf("%s.ports[%d]", where, j)))
			}
		}
		out = append(out, r)
	}
	return out
}

func (d *decoder) peer(n *yaml.Node, where string) Peer {
	f := d.fields(n, where, "matchLabels", "matchExpressions", "entities", "cidr", "except")
	if d.err != nil {
		return Peer{}
	}
	hasSel := f["matchLabels"] != nil || f["matchExpressions"] != nil
	hasEnt := f["entities"] != nil
	hasCIDR := f["cidr"] != nil
	if f["except"] != nil && !hasCIDR {
		d.fail(n, "%s: except needs cidr", where)
		return Peer{}
	}
	kinds := 0
	for _, b := range []bool{hasSel, hasEnt, hasCIDR} {
		if b {
			kinds++
		}
	}
	if kinds > 1 {
		d.fail(n, "%s mixes a label selector, entities and cidr: write each as its own list item", where)
		return Peer{}
	}
	switch {
	case hasEnt:
		p := Peer{Kind: PeerEntities}
		items := d.seq(f["entities"], where+".entities")
		if d.err == nil && len(items) == 0 {
			d.fail(f["entities"], "%s.entities is empty: name at least one of %s", where, entityList())
		}
		for _, e := range items {
			s := Entity(d.str(e, "entity"))
			if d.err != nil {
				return Peer{}
			}
			if !slices.Contains(entities, s) {
				d.fail(e, "unknown entity %q (use %s)", s, entityList())
				return Peer{}
			}
			if !slices.Contains(p.Entities, s) {
				p.Entities = append(p.Entities, s)
			}
		}
		return p
	case hasCIDR:
		p := Peer{Kind: PeerCIDR}
		p.CIDR = d.prefix(f["cidr"], where+".cidr")
		if x := f["except"]; x != nil {
			for _, e := range d.seq(x, where+".except") {
				ex := d.prefix(e, where+".except")
				if d.err != nil {
					return Peer{}
				}
				if err := checkExcept(p.CIDR, ex); err != nil {
					d.fail(e, "%s: %v", where, err)
					return Peer{}
				}
				p.Except = append(p.Except, ex)
			}
		}
		return p
	default:
		// Only selector fields are left (or none: `{}`, every mesh endpoint).
		sel, err := identity.SelectorFromNode(n)
		if err != nil {
			d.failErr(n, fmt.Errorf("%s: %w", where, err))
			return Peer{}
		}
		return Peer{Kind: PeerSelector, Selector: sel}
	}
}

func checkExcept(cidr, ex netip.Prefix) error {
	if ex.Addr().Is4() != cidr.Addr().Is4() || ex.Bits() <= cidr.Bits() || !cidr.Contains(ex.Addr()) {
		return fmt.Errorf("except %s is not strictly inside cidr %s", ex, cidr)
	}
	return nil
}

func (d *decoder) prefix(n *yaml.Node, what string) netip.Prefix {
	s := d.str(n, what)
	if d.err != nil {
		return netip.Prefix{}
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		if a, aerr := netip.ParseAddr(s); aerr == nil {
			d.fail(n, "%s %q is an address, not a prefix: write %s/%d", what, s, a, a.BitLen())
			return netip.Prefix{}
		}
		d.fail(n, "%s %q is not a CIDR prefix such as 198.18.0.0/16", what, s)
		return netip.Prefix{}
	}
	if p.Addr().Is4In6() {
		d.fail(n, "%s %q: write IPv4 prefixes in dotted form", what, s)
		return netip.Prefix{}
	}
	if p.Masked() != p {
		d.fail(n, "%s %q has host bits set: write %s", what, s, p.Masked())
		return netip.Prefix{}
	}
	return p
}

func (d *decoder) port(n *yaml.Node, where string) PortRule {
	f := d.fields(n, where, "port", "endPort", "protocol")
	if d.err != nil {
		return PortRule{}
	}
	pr := PortRule{Protocol: ProtoTCP}
	if pn := f["protocol"]; pn != nil {
		s := d.str(pn, "protocol")
		if d.err != nil {
			return PortRule{}
		}
		switch Protocol(s) {
		case ProtoTCP, ProtoUDP, ProtoSCTP, ProtoICMP, ProtoANY:
			pr.Protocol = Protocol(s)
		default:
			if up := Protocol(strings.ToUpper(s)); slices.Contains([]Protocol{ProtoTCP, ProtoUDP, ProtoSCTP, ProtoICMP, ProtoANY}, up) {
				d.fail(pn, "protocol %q: write it in capitals (%s)", s, up)
			} else {
				d.fail(pn, "unknown protocol %q (use TCP, UDP, SCTP, ICMP or ANY)", s)
			}
			return PortRule{}
		}
	}
	if pn := f["port"]; pn != nil {
		if isNamedPort(pn) {
			pr.Name = d.portName(pn, where)
		} else {
			pr.Port = d.portNumber(pn, "port")
		}
	}
	if en := f["endPort"]; en != nil {
		if f["port"] == nil {
			d.fail(en, "%s: endPort needs port (the start of the range)", where)
			return PortRule{}
		}
		if pr.Name != "" {
			d.fail(en, "%s: endPort needs a port number: a named port (%s) is one port, not the start of a range", where, pr.Name)
			return PortRule{}
		}
		pr.EndPort = d.portNumber(en, "endPort")
		if d.err == nil && pr.EndPort < pr.Port {
			d.fail(en, "%s: endPort %d is below port %d", where, pr.EndPort, pr.Port)
		}
		if pr.EndPort == pr.Port {
			pr.EndPort = 0
		}
	}
	if d.err == nil && pr.Protocol == ProtoICMP && f["port"] != nil {
		d.fail(f["port"], "%s: ICMP has no ports: remove port (ICMP entries cover every ICMP message)", where)
	}
	return pr
}

func (d *decoder) portNumber(n *yaml.Node, what string) uint16 {
	if d.err != nil {
		return 0
	}
	if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!int" {
		if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!str" {
			d.fail(n, "%s %q must be a number between 1 and 65535, unquoted", what, n.Value)
		} else {
			d.fail(n, "%s must be a number between 1 and 65535, not %s", what, describe(n))
		}
		return 0
	}
	v, err := strconv.ParseInt(n.Value, 0, 64)
	if err != nil || v < 1 || v > 65535 {
		d.fail(n, "%s %s is out of range (1-65535)", what, n.Value)
		return 0
	}
	return uint16(v)
}

// isNamedPort reports whether a port value is written as a name: a
// string with a letter in it ("80" quoted is a number written wrongly,
// and is reported as such).
func isNamedPort(n *yaml.Node) bool {
	if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!str" {
		return false
	}
	return strings.ContainsFunc(n.Value, func(r rune) bool { return r < '0' || r > '9' })
}

// portName reads a named port (`port: http`).
func (d *decoder) portName(n *yaml.Node, where string) string {
	if d.err != nil {
		return ""
	}
	if err := ValidatePortName(n.Value); err != nil {
		d.fail(n, "%s: port %v; or write a number between 1 and 65535", where, err)
		return ""
	}
	return n.Value
}

// ValidateName checks a policy name: the mesh's one name rule
// (internal/names), since it becomes an etcd key (policies/<name>) and
// appears in traces.
func ValidateName(name string) error { return names.Validate("policy", name) }

func entityList() string {
	s := make([]string, len(entities))
	for i, e := range entities {
		s[i] = string(e)
	}
	return strings.Join(s, ", ")
}

func deref(n *yaml.Node) *yaml.Node {
	for n != nil && n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	return n
}

func isNull(n *yaml.Node) bool {
	n = deref(n)
	return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null"
}

func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		if n.ShortTag() == "!!null" {
			return "null"
		}
		return fmt.Sprintf("%q", n.Value)
	}
	return "an unexpected YAML node"
}
