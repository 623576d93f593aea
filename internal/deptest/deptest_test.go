package deptest

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
)

const module = "github.com/weftmesh/weft"

// Dependencies the rules keep out of packages, by import path prefix.
const (
	etcd      = "go.etcd.io/etcd"
	ebpf      = "github.com/cilium/ebpf"
	netlink   = "github.com/vishvananda/netlink"
	wireguard = "golang.zx2c4.com/wireguard"
	// The userspace WireGuard the tunnel embeds: the same concern as
	// golang.zx2c4.com/wireguard under another module path.
	wireguardGo = "github.com/tailscale/wireguard-go"
)

// rule says that no package matched by from (but not by except) may reach
// a package under any of forbid.
type rule struct {
	name string
	// why is the design reason, told to whoever breaks the rule.
	why string
	// goos is the platform whose import graph is checked.
	goos string
	// from and except are package patterns: an import path, or one
	// ending in /... for it and everything under it.
	from, except []string
	// through are packages the rule does not look past: reaching a
	// forbidden package through one of them is allowed.
	through []string
	forbid  []string
}

var rules = []rule{
	{
		name:   "meshctl links no datapath, netlink or etcd",
		why:    "meshctl talks to agents over their API socket; the datapath, netlink and etcd belong to the agent (and keep meshctl small and portable)",
		goos:   "linux",
		from:   []string{module + "/meshctl/..."},
		forbid: []string{ebpf, netlink, etcd},
	},
	{
		name:   "meshctl for macOS links no datapath, netlink or etcd",
		why:    "meshctl on a Mac talks to a remote agent's socket (docs/cli.md)",
		goos:   "darwin",
		from:   []string{module + "/meshctl/..."},
		forbid: []string{ebpf, netlink, etcd},
	},
	{
		name:   "identity and policy know nothing of etcd or the kernel",
		why:    "they are pure and unit-testable; the agent wires them to kvstore and the datapath (DESIGN.md)",
		goos:   "linux",
		from:   []string{module + "/identity/...", module + "/policy/..."},
		except: []string{module + "/identity/allocator/..."},
		forbid: []string{etcd, ebpf, netlink},
	},
	{
		name:    "identity/allocator reaches etcd only through kvstore, and never the kernel",
		why:     "the allocator stores identities through kvstore's typed API; etcd itself is kvstore's business",
		goos:    "linux",
		from:    []string{module + "/identity/allocator/..."},
		through: []string{module + "/kvstore"},
		forbid:  []string{etcd, ebpf, netlink},
	},
	{
		name:   "bpf and tunnel know nothing of etcd",
		why:    "the datapath and the tunnel are driven by the agent from its caches, and work while etcd is down (DESIGN.md)",
		goos:   "linux",
		from:   []string{module + "/bpf/...", module + "/tunnel/..."},
		forbid: []string{etcd},
	},
	{
		name:   "kvstore knows nothing of the kernel",
		why:    "kvstore is etcd and the key schema; devices, programs and routes are the agent's (DESIGN.md)",
		goos:   "linux",
		from:   []string{module + "/kvstore/..."},
		forbid: []string{ebpf, netlink, wireguard, wireguardGo},
	},
}

// TestDependencies checks every rule; each failure names the chain.
func TestDependencies(t *testing.T) {
	for _, r := range rules {
		t.Run(r.name, func(t *testing.T) {
			g := importGraph(t, r.goos)
			for _, v := range r.violations(g) {
				t.Errorf("%s (GOOS=%s): %s reaches %s:\n    %s\n  Why the rule: %s.\n  Cut one of these imports, or move the code that needs %s to a package the rule does not cover.",
					r.name, r.goos, v.chain[0], v.forbidden, strings.Join(v.chain, "\n    -> "), r.why, v.forbidden)
			}
		})
	}
}

// A rule finds what it forbids, follows chains through other packages and
// stops where it should: the rules above could pass vacuously otherwise.
func TestRuleFindsChains(t *testing.T) {
	g := graph{
		"m/cmd":     {"m/cli"},
		"m/cli":     {"m/flows", "fmt"},
		"m/flows":   {"m/bpf"},
		"m/bpf":     {"x.io/ebpf/link"},
		"m/alloc":   {"m/kv"},
		"m/kv":      {"x.io/etcd/client"},
		"m/kv/test": {"x.io/etcd/server"},
	}
	r := rule{from: []string{"m/cmd"}, forbid: []string{"x.io/ebpf"}}
	v := r.violations(g)
	if len(v) != 1 || strings.Join(v[0].chain, " ") != "m/cmd m/cli m/flows m/bpf x.io/ebpf/link" {
		t.Fatalf("violations = %+v", v)
	}
	if v := (rule{from: []string{"m/alloc"}, through: []string{"m/kv"}, forbid: []string{"x.io/etcd"}}).violations(g); len(v) != 0 {
		t.Errorf("a chain through an allowed package is reported: %+v", v)
	}
	if v := (rule{from: []string{"m/kv/..."}, except: []string{"m/kv/test"}, forbid: []string{"x.io/etcd"}}).violations(g); len(v) != 1 || v[0].chain[0] != "m/kv" {
		t.Errorf("except: %+v", v)
	}
	if v := (rule{from: []string{"m/..."}, forbid: []string{"x.io/etcdx"}}).violations(g); len(v) != 0 {
		t.Errorf("a prefix that is not a path element matched: %+v", v)
	}
}

// graph maps a package to the packages it imports.
type graph map[string][]string

type violation struct {
	forbidden string
	chain     []string // from a covered package to the forbidden one
}

// violations returns, for each forbidden prefix reached, the shortest
// chain from any covered package, so one bad import is one message.
func (r rule) violations(g graph) []violation {
	var roots []string
	for p := range g {
		if matchAny(r.from, p) && !matchAny(r.except, p) {
			roots = append(roots, p)
		}
	}
	sort.Strings(roots)
	// Breadth first from every root at once: the first time a forbidden
	// package is seen is by a shortest chain.
	parent := map[string]string{}
	seen := map[string]bool{}
	queue := slices.Clone(roots)
	for _, p := range roots {
		seen[p] = true
	}
	found := map[string][]string{}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		if f := forbiddenBy(r.forbid, p); f != "" {
			if _, ok := found[f]; !ok {
				var chain []string
				for q := p; q != ""; q = parent[q] {
					chain = append([]string{q}, chain...)
				}
				found[f] = chain
			}
			continue
		}
		if slices.Contains(r.through, p) && !slices.Contains(roots, p) {
			continue
		}
		for _, q := range g[p] {
			if !seen[q] {
				seen[q] = true
				parent[q] = p
				queue = append(queue, q)
			}
		}
	}
	var out []violation
	for _, f := range r.forbid {
		if chain, ok := found[f]; ok {
			out = append(out, violation{forbidden: f, chain: chain})
		}
	}
	return out
}

func forbiddenBy(forbid []string, p string) string {
	for _, f := range forbid {
		if p == f || strings.HasPrefix(p, f+"/") {
			return f
		}
	}
	return ""
}

func matchAny(patterns []string, p string) bool {
	for _, pat := range patterns {
		if base, ok := strings.CutSuffix(pat, "/..."); ok {
			if p == base || strings.HasPrefix(p, base+"/") {
				return true
			}
		} else if p == pat {
			return true
		}
	}
	return false
}

var (
	graphsMu sync.Mutex
	graphs   = map[string]graph{}
)

// importGraph is the import graph of every package of the module and its
// dependencies for goos (test files left out: rules are about what ships),
// from one `go list -deps`, computed once per goos.
func importGraph(t *testing.T, goos string) graph {
	t.Helper()
	graphsMu.Lock()
	defer graphsMu.Unlock()
	if g, ok := graphs[goos]; ok {
		return g
	}
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the dependency rules need the go command in PATH: %v", err)
	}
	cmd := exec.Command(goTool, "list", "-deps", "-e", "-json=ImportPath,Imports,Error", module+"/...")
	cmd.Env = append(os.Environ(), "GOOS="+goos)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list -deps (GOOS=%s): %v\n%s", goos, err, stderr.String())
	}
	g := graph{}
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var p struct {
			ImportPath string
			Imports    []string
			Error      *struct{ Err string }
		}
		if err := dec.Decode(&p); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("decoding go list: %v", err)
		}
		// A package that does not load (someone is mid-edit) has no
		// imports to check: say so rather than pass in silence.
		if p.Error != nil {
			t.Logf("GOOS=%s: %s does not load, its imports are not checked: %s", goos, p.ImportPath, p.Error.Err)
		}
		g[p.ImportPath] = p.Imports
	}
	if len(g) == 0 {
		t.Fatalf("go list (GOOS=%s) listed no packages", goos)
	}
	graphs[goos] = g
	return g
}
