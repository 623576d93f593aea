package policy

import (
	"errors"
	"strings"
	"testing"

	"github.com/weftmesh/weft/identity"
	"github.com/weftmesh/weft/internal/names"
)

// A file of three documents, with comments and a directive-free preamble,
// as a user writes it.
const threeDocs = `# policies of the shop
apiVersion: weft.dev/v1
kind: Policy
metadata: {name: web}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
    - ports: [{port: 443}]
---
# the database
apiVersion: weft.dev/v1
kind: Policy
metadata:
  name: db
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress:
    - from: [{matchLabels: {app: web}}]
      ports: [{port: 5432, protocol: TCP}]
  ingressDeny:
    - from: [{entities: [world]}]
--- # cache
apiVersion: weft.dev/v1
kind: Policy
metadata: {name: cache}
spec: {endpointSelector: {matchLabels: {app: cache}}, ingress: []}
`

// Each policy keeps its document's text as written and the line it
// starts on; parsing that text back at that line gives the file's lines.
func TestParseKeepsEachDocumentsSourceAndLines(t *testing.T) {
	ps, err := Parse("shop.yaml", []byte(threeDocs))
	if err != nil {
		t.Fatal(err)
	}
	if len(ps) != 3 {
		t.Fatalf("got %d policies", len(ps))
	}
	lines := strings.Split(threeDocs, "\n")
	for _, want := range []struct {
		name        string
		sourceLine  int
		firstRule   int // line of the first rule of its first section
		sourceStart string
	}{
		{"web", 1, 8, "# policies of the shop\n"},
		{"db", 9, 18, "---\n# the database\n"},
		{"cache", 22, 0, "--- # cache\n"},
	} {
		var p *Policy
		for _, q := range ps {
			if q.Name == want.name {
				p = q
			}
		}
		if p == nil {
			t.Fatalf("no policy %s", want.name)
		}
		if p.SourceLine != want.sourceLine || !strings.HasPrefix(p.Source, want.sourceStart) {
			t.Errorf("%s: source from line %d starting %q, want line %d starting %q", p.Name, p.SourceLine, firstLine(p.Source), want.sourceLine, want.sourceStart)
		}
		if want.firstRule != 0 {
			if got := p.Ingress[0].Line; got != want.firstRule {
				t.Errorf("%s: ingress[0] on line %d (%q), want %d (%q)", p.Name, got, lines[got-1], want.firstRule, lines[want.firstRule-1])
			}
		}
		// The stored form: the text alone, parsed at its line.
		back, err := ParseSource("shop.yaml", p.SourceLine, []byte(p.Source))
		if err != nil {
			t.Fatalf("%s: parsing its own source: %v", p.Name, err)
		}
		if back.Name != p.Name || back.Line != p.Line || len(back.Ingress) != len(p.Ingress) || (len(p.Ingress) > 0 && back.Ingress[0].Line != p.Ingress[0].Line) {
			t.Errorf("%s: source parsed back as %+v, want the lines of %+v", p.Name, back, p)
		}
	}
	// A trace names the rule by the user's file and line.
	tr := Trace(ps, identity.MustLabels("reserved:world"), identity.MustLabels("vm:app=db"), 5432, IPProtoTCP)
	if tr.Verdict != Deny || tr.Ingress.Rule == nil || tr.Ingress.Rule.String() != "db/ingressDeny[0] (shop.yaml:21)" {
		t.Fatalf("trace world -> db = %+v, want denied by db/ingressDeny[0] (shop.yaml:21)", tr.Ingress)
	}
}

func firstLine(s string) string { l, _, _ := strings.Cut(s, "\n"); return l }

// One name rule everywhere: a name the store would refuse (over 63
// characters) is refused by the parser, naming the file, line, document
// and rule.
func TestParseRefusesANameTheStoreWouldRefuse(t *testing.T) {
	long := strings.Repeat("a", 100)
	doc := strings.Replace(threeDocs, "name: db", "name: "+long, 1)
	ps, err := Parse("shop.yaml", []byte(doc))
	if err == nil || ps != nil {
		t.Fatalf("a 100-character name parsed: %v", ps)
	}
	if !errors.Is(err, ErrInvalid) {
		t.Fatalf("error %v does not wrap ErrInvalid", err)
	}
	for _, want := range []string{"shop.yaml:14:9: document 2: ", "100 characters long", names.Rule} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
	if err := ValidateName(strings.Repeat("a", 63)); err != nil {
		t.Errorf("63 characters refused: %v", err)
	}
}

// A document larger than the store holds is refused by the parser too.
func TestParseRefusesADocumentTooLargeToStore(t *testing.T) {
	big := hdr + "metadata: {name: big}\n# " + strings.Repeat("x", MaxDocumentBytes) + "\nspec: {endpointSelector: {}, ingress: []}\n"
	_, err := Parse("big.yaml", []byte(threeDocs+"---\n"+big))
	if err == nil || !strings.Contains(err.Error(), "big.yaml:") || !strings.Contains(err.Error(), "document 4: ") || !strings.Contains(err.Error(), "split it") {
		t.Fatalf("an oversized document = %v", err)
	}
}

// A syntax error in one document no longer hides the others' errors, and
// its line is the file's.
func TestParseSyntaxErrorLineIsTheFiles(t *testing.T) {
	doc := strings.Replace(threeDocs, "metadata: {name: cache}", "metadata: {name: cache", 1)
	_, err := Parse("shop.yaml", []byte(doc))
	var pe *ParseError
	if !errors.As(err, &pe) || pe.Line < 22 || pe.Document != 3 {
		t.Fatalf("syntax error = %v (%+v), want a line of the third document (22 or later)", err, pe)
	}
}

// Trace from and to entities: the reserved identities stand for what
// policies name as entities.
func TestTraceEntities(t *testing.T) {
	ps, err := Parse("p.yaml", []byte(hdr+`metadata: {name: db}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress:
    - from: [{entities: [host, remote-node]}]
      ports: [{port: 5432}]
  egress:
    - to: [{entities: [world]}]
`))
	if err != nil {
		t.Fatal(err)
	}
	db := identity.MustLabels("vm:app=db")
	for _, c := range []struct {
		from, to identity.Labels
		port     uint16
		want     Verdict
	}{
		{identity.MustLabels("reserved:host"), db, 5432, Allow},
		{identity.MustLabels("reserved:remote-node"), db, 5432, Allow},
		{identity.MustLabels("reserved:world"), db, 5432, Deny},
		{db, identity.MustLabels("reserved:world"), 443, Allow},
		{db, identity.MustLabels("reserved:host"), 443, Deny},
	} {
		if tr := Trace(ps, c.from, c.to, c.port, IPProtoTCP); tr.Verdict != c.want {
			t.Errorf("trace %s -> %s:%d = %s, want %s (%+v)", c.from, c.to, c.port, tr.Verdict, c.want, tr)
		}
	}
}

// --port any: allowed only when every protocol and port is, denied when
// a deny rule names any of them.
func TestTraceAnyPort(t *testing.T) {
	ps, err := Parse("p.yaml", []byte(hdr+`metadata: {name: db}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress:
    - from: [{matchLabels: {app: web}}]
      ports: [{port: 5432}]
    - from: [{matchLabels: {app: admin}}]
  ingressDeny:
    - from: [{matchLabels: {app: admin}}]
      ports: [{port: 22}]
`))
	if err != nil {
		t.Fatal(err)
	}
	db := identity.MustLabels("vm:app=db")
	for _, c := range []struct {
		from string
		want Verdict
		rule string
	}{
		{"vm:app=web", Deny, ""},                 // only 5432 is allowed
		{"vm:app=admin", Deny, "ingressDeny[0]"}, // everything but 22
		{"vm:app=ops", Deny, ""},
	} {
		tr := Trace(ps, identity.MustLabels(c.from), db, 0, IPProtoAny)
		if tr.Verdict != c.want {
			t.Errorf("trace %s -> db any = %s, want %s", c.from, tr.Verdict, c.want)
		}
		if c.rule != "" && (tr.Ingress.Rule == nil || tr.Ingress.Rule.Section+"["+string(rune('0'+tr.Ingress.Rule.Index))+"]" != c.rule) {
			t.Errorf("trace %s -> db any decided by %v, want %s", c.from, tr.Ingress.Rule, c.rule)
		}
	}
	open, err := Parse("p.yaml", []byte(hdr+"metadata: {name: all}\nspec: {endpointSelector: {}, ingress: [{from: [{matchLabels: {app: web}}]}]}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if tr := Trace(open, identity.MustLabels("vm:app=web"), db, 0, IPProtoAny); tr.Verdict != Allow || tr.Ingress.Rule == nil {
		t.Errorf("a rule without ports allows any: %+v", tr)
	}
}

// ENTRIES of `policy list`: what each policy's rules produce on the
// local endpoints it selects.
func TestPolicyEntries(t *testing.T) {
	ps, err := Parse("shop.yaml", []byte(threeDocs))
	if err != nil {
		t.Fatal(err)
	}
	c := NewCompiler(testIdentities())
	if _, err := c.ReplacePolicies(ps); err != nil {
		t.Fatal(err)
	}
	if got := c.PolicyEntries(); got["db"] != 0 || got["web"] != 0 || len(got) != 3 {
		t.Fatalf("entries with no local endpoint = %v, want all 0", got)
	}
	ep := c.AddEndpoint("db-1", identity.MustLabels("vm:app=db"))
	got := c.PolicyEntries()
	if got["db"] == 0 || got["web"] != 0 || got["cache"] != 0 {
		t.Fatalf("entries = %v, want db's only", got)
	}
	if got["db"] != len(ep.Entries) {
		t.Fatalf("db counts %d entries, the endpoint holds %d (db is the only policy selecting it)", got["db"], len(ep.Entries))
	}
}
