package connectivity

import (
	"io/fs"
	"slices"
	"strings"
	"testing"

	"github.com/weftmesh/weft/identity"
	"github.com/weftmesh/weft/policy"
)

// Every embedded file is a valid policy as written, and every one is a
// scenario's (a file no scenario uses is a scenario someone forgot).
func TestScenarioPolicyFilesAreValidPolicies(t *testing.T) {
	files, err := fs.Glob(policyFiles, "policies/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no embedded scenario policies: %v", err)
	}
	var used []string
	for _, ps := range policyScenarios {
		used = append(used, "policies/"+ps.file)
	}
	for _, f := range files {
		data, err := policyFiles.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		ps, err := policy.Parse(f, data)
		if err != nil {
			t.Errorf("%s is not a valid policy: %v", f, err)
			continue
		}
		if len(ps) != 1 {
			t.Errorf("%s holds %d policies, want 1", f, len(ps))
		}
		if !slices.Contains(used, f) {
			t.Errorf("%s is embedded but no scenario in policyScenarios uses it", f)
		}
	}
}

// probeLabels are a probe workload's labels as the agent stores them.
func probeLabels(run, role string) identity.Labels {
	return identity.MustLabels("vm:"+runLabel+"="+run, "vm:"+roleLabel+"="+role, "mesh:cluster=default")
}

// What each rendered policy lets the client reach is what its scenario's
// checks expect, and traffic between workloads that are not this run's
// probes (another run's, ordinary ones) is not affected. (This run's
// probes may be isolated from everything else: that is what the policy
// does to the endpoints it selects.)
func TestScenarioPoliciesDoWhatTheScenariosCheck(t *testing.T) {
	// Digits only: a run id YAML would read as a number if left unquoted.
	const run, other = "123456", "abcdef"
	for _, sc := range policyScenarios {
		t.Run(sc.name, func(t *testing.T) {
			name := "probe-" + run + "-" + strings.TrimSuffix(sc.file, ".yaml")
			doc, err := renderPolicy(sc.file, name, run)
			if err != nil {
				t.Fatal(err)
			}
			p, err := policy.ParseOne(name+".yaml", doc)
			if err != nil {
				t.Fatalf("rendered policy does not parse: %v\n%s", err, doc)
			}
			if p.Name != name {
				t.Errorf("name %q, want %q", p.Name, name)
			}
			if strings.Contains(string(doc), "probe-run-") || strings.Contains(string(doc), ": run") {
				t.Errorf("a placeholder survived:\n%s", doc)
			}
			ps := []*policy.Policy{p}
			verdict := func(from, to identity.Labels, port uint16) bool {
				return policy.Trace(ps, from, to, port, policy.IPProtoTCP).Verdict == policy.Allow
			}
			client, echo := probeLabels(run, "client"), probeLabels(run, "echo")
			if got := verdict(client, echo, PortA); got != sc.allowA {
				t.Errorf("client -> echo on %d: allowed %v, the scenario checks %v", PortA, got, sc.allowA)
			}
			if got := verdict(client, echo, PortB); got != sc.allowB {
				t.Errorf("client -> echo on %d: allowed %v, the scenario checks %v", PortB, got, sc.allowB)
			}
			for _, pair := range [][2]identity.Labels{
				{probeLabels(other, "client"), probeLabels(other, "echo")},
				{identity.MustLabels("vm:app=web", "mesh:cluster=default"), identity.MustLabels("vm:app=db", "mesh:cluster=default")},
			} {
				for _, port := range []uint16{PortA, PortB} {
					if !verdict(pair[0], pair[1], port) {
						t.Errorf("%s -> %s on %d is denied: the scenario policy reaches beyond its run", pair[0], pair[1], port)
					}
				}
			}
		})
	}
}

// A scenario policy that forgot the run label would select real
// workloads: rendering refuses it.
func TestRenderRefusesAPolicyNotScopedToTheRun(t *testing.T) {
	if _, err := renderPolicy("missing.yaml", "x", "123456"); err == nil {
		t.Error("rendered a file that does not exist")
	}
	var n int
	for _, sc := range policyScenarios {
		doc, err := renderPolicy(sc.file, "probe-123456-x", "123456")
		if err != nil {
			t.Fatal(err)
		}
		n += strings.Count(string(doc), `"123456"`)
	}
	if n == 0 {
		t.Error("the run id is not written as a quoted string")
	}
}
