package labcli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/weftmesh/weft/internal/lab"
	"github.com/weftmesh/weft/internal/lab/labtest"
	"github.com/weftmesh/weft/internal/testutil"
)

// Bad input is refused with an error naming the flag or field, before the
// lab is touched (so these run without root too).
func TestLabInputErrors(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("name: x\nsites:\n  - name: a\n    nodes: [{name: a1, addr: 1}]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"up", "--sites", "0"}, "--sites must be between 1 and 64, got 0"},
		{[]string{"up", "--nodes-per-site", "500"}, "--nodes-per-site must be between 1 and 200, got 500"},
		{[]string{"up", "--workloads-per-node", "-1"}, "--workloads-per-node must be between 0 and 64, got -1"},
		{[]string{"up", "--name", "My-Lab"}, `--name: "My-Lab" is not a valid lab name`},
		{[]string{"up", "-f", bad, "--nat-site"}, "--nat-site cannot be used with -f"},
		{[]string{"up", "-f", bad}, bad + ": sites[0].nodes[0].addr: unknown field"},
		{[]string{"up", "-f", filepath.Join(dir, "missing.yaml")}, "reading the topology"},
		{[]string{"up", "extra"}, `lab up takes no arguments, got "extra"`},
		{[]string{"status", "-o", "yaml"}, `--output "yaml" is not a format: use table or json`},
		{[]string{"exec", "site1-n1"}, "lab exec needs a node and a command"},
		{[]string{"exec", "site1-n1", "--"}, "lab exec needs a node and a command"},
		{[]string{"down", "a", "--all"}, "give a lab name or --all, not both"},
		{[]string{"down", "a", "b"}, "lab down takes one lab name, got 2: a b"},
		{[]string{"status", "a", "--bogus"}, "unknown flag --bogus"},
		{[]string{"status", "a", "-o"}, "-o needs a value"},
		{[]string{"status", "a", "-o", "xml"}, `--output "xml" is not a format`},
		{[]string{"down", "--all", "a"}, "give a lab name or --all, not both"},
		{[]string{"down", "a", "--yes"}, "--yes goes with --all"},
		{[]string{"down", "--recorded", "f", "--all"}, "--recorded FILE goes alone"},
		{[]string{"up", "--owns", "/home/me/state"}, `--owns: "/home/me/state" is not below /run/`},
		{[]string{"up", "--owns", "/run"}, `--owns: "/run" is not below`},
		{[]string{"up", "--owns", "/run/weft-lab"}, `--owns: "/run/weft-lab" is not below`},
		{[]string{"up", "--owns", "/tmp/../etc"}, `--owns: "/tmp/../etc" is not a clean absolute path`},
		{[]string{"up", "--owns", "/run/netns"}, `--owns: "/run/netns": a lab owns only a weft-* entry`},
		{[]string{"up", "--owns", "/sys/fs/bpf/weft"}, `--owns: "/sys/fs/bpf/weft": a lab owns only a weft-* entry`},
		{[]string{"up", "--owns", "/tmp/weft-x/sub"}, `--owns: "/tmp/weft-x/sub": a lab owns only a weft-* entry`},
		{[]string{"up", "--hold", "--record", "f"}, "--hold and --record do not go together"},
		{[]string{"up", "--nat-kind", "full-cone"}, `--nat-kind: "full-cone" is not a kind of NAT for the NAT site: use eim (endpoint-independent mapping) or symmetric`},
		{[]string{"up", "--nat-kind", "none"}, `--nat-kind: "none" is not a kind of NAT`},
		{[]string{"up", "-f", bad, "--nat-kind", "symmetric"}, "--nat-kind cannot be used with -f"},
		{[]string{"cut"}, "lab cut needs two site names, got 0: meshctl lab cut [--lab NAME] SITE_A SITE_B"},
		{[]string{"cut", "site1"}, "lab cut needs two site names, got 1 (site1)"},
		{[]string{"cut", "a", "b", "c"}, "got 3 (a b c)"},
		{[]string{"cut", "a", "b", "-o", "xml"}, `--output "xml" is not a format`},
		{[]string{"cut", "a", "b", "--bogus"}, "unknown flag --bogus"},
		{[]string{"cut", "a", "b", "--lab"}, "--lab needs a value"},
		{[]string{"heal", "a"}, "lab heal needs two site names or --all, got 1 (a)"},
		{[]string{"heal", "a", "b", "--all"}, "give two site names or --all, not both (got a b and --all)"},
		{[]string{"heal", "--all", "a"}, "give two site names or --all, not both"},
		{[]string{"heal", "a", "b", "--all=x"}, "--all takes no value"},
	}
	for _, tt := range tests {
		_, _, err := runApp(t, tt.args...)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("meshctl lab %s: got error %v, want one containing %q", strings.Join(tt.args, " "), err, tt.want)
		}
	}
}

// TestWeftLabHelper is not a test: the privileged tests run the test binary
// with it as the weft-lab command, so `lab up` really runs in its own
// process and exits (or is killed) as it would for a user.
func TestWeftLabHelper(t *testing.T) {
	if os.Getenv("WEFT_LAB_TEST_HELPER") != "1" {
		t.Skip("helper process for the lab tests")
	}
	i := slices.Index(os.Args, "--")
	os.Exit(ExitStatus(Run(context.Background(), os.Args[i+1:], os.Stdin, os.Stdout, os.Stderr), os.Stderr))
}

// weftLab is `weft-lab ARGS...`, that is `meshctl lab ARGS...`.
func weftLab(args ...string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], append([]string{"-test.run=^TestWeftLabHelper$", "--"}, args...)...)
	cmd.Env = append(os.Environ(), "WEFT_LAB_TEST_HELPER=1")
	return cmd
}

func run(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	var out, errOut bytes.Buffer
	cmd := weftLab(args...)
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	code := 0
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		code = exit.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return out.String(), errOut.String(), code
}

// The lab lives on after `meshctl lab up` exits; status, exec and down
// work from later invocations.
func TestLabCommands(t *testing.T) {
	testutil.Privileged(t)
	name := labtest.UniqueName()
	t.Cleanup(func() {
		if l, err := lab.Load(name); err == nil {
			_ = l.Down()
		}
	})
	out, errOut, code := run(t, "up", "--name", name, "--sites", "3", "--nodes-per-site", "1", "--nat-site", "--workloads-per-node", "1")
	if code != 0 {
		t.Fatalf("lab up: exit %d\n%s\n%s", code, out, errOut)
	}
	for _, want := range []string{"creating namespaces", "site ready site=site3", "lab is up"} {
		if !strings.Contains(errOut, want) {
			t.Errorf("progress line %q missing:\n%s", want, errOut)
		}
	}
	if !strings.Contains(out, "site3-n1      node      site3  wl-"+name+"-site3-n1") || !regexp.MustCompile(`site3-router .* eim\n`).MatchString(out) {
		t.Errorf("lab up output:\n%s", out)
	}

	out, errOut, code = run(t, "status", name, "-o", "json")
	if code != 0 {
		t.Fatalf("lab status: exit %d: %s", code, errOut)
	}
	var st lab.Status
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("status json: %v\n%s", err, out)
	}
	if st.Name != name || !st.Complete || st.InUse || len(st.Routers) != 3 || len(st.Nodes) != 3 || len(st.Workloads) != 3 || len(st.Missing) != 0 {
		t.Errorf("status: %+v", st)
	}

	// A NAT'd node reaches a public one; the way back in is closed.
	out, errOut, code = run(t, "exec", "--lab", name, "site3-n1", "--", "ping", "-c", "1", "-W", "5", "198.18.1.10")
	if code != 0 || !strings.Contains(out, "1 received") {
		t.Errorf("ping out of the NAT: exit %d\n%s%s", code, out, errOut)
	}
	if _, _, code = run(t, "exec", "--lab", name, "site1-n1", "--", "ping", "-c", "1", "-W", "2", "198.18.3.10"); code == 0 {
		t.Error("a public node pings a NAT'd node")
	}
	// Workloads and routers are exec targets too; the exit status is kept.
	if out, errOut, code = run(t, "exec", "--lab", name, "site1-n1-w1", "--", "ip", "-o", "link", "show", "eth0"); code != 0 || !strings.Contains(out, "eth0") {
		t.Errorf("exec in a workload: exit %d %s %s", code, out, errOut)
	}
	if out, _, code = run(t, "exec", "--lab", name, "site3-router", "--", "nft", "list", "ruleset"); code != 0 || !strings.Contains(out, "masquerade") {
		t.Errorf("exec in the NAT router: exit %d %s", code, out)
	}
	if _, _, code = run(t, "exec", "--lab", name, "site2-n1", "--", "sh", "-c", "exit 7"); code != 7 {
		t.Errorf("exit status: got %d, want 7", code)
	}
	if _, errOut, code = run(t, "exec", "--lab", name, "nope", "--", "true"); code == 0 || !strings.Contains(errOut, `no node, workload or router named "nope"`) {
		t.Errorf("unknown node: exit %d %s", code, errOut)
	}
	if _, errOut, code = run(t, "up", "--name", name); code == 0 || !strings.Contains(errOut, "already exists") {
		t.Errorf("second lab up with the same name: exit %d %s", code, errOut)
	}

	if out, errOut, code = run(t, "down", name); code != 0 || !strings.Contains(out, "removed") {
		t.Fatalf("lab down: exit %d %s %s", code, out, errOut)
	}
	if left := labtest.Namespaces(t, name); len(left) > 0 {
		t.Errorf("namespaces left after lab down: %v", left)
	}
	if _, errOut, code = run(t, "status", name); code == 0 || !strings.Contains(errOut, "no such lab") {
		t.Errorf("status of a removed lab: exit %d %s", code, errOut)
	}
}

// `meshctl lab up` killed while it builds leaves a lab that
// `meshctl lab down --all` lists for removal (no process holds it) and
// removes nothing without --yes, and that `lab down NAME` removes
// completely: killed right after it claimed the name (state file), and
// once its namespaces exist. meshctl execs weft-lab, so killing meshctl
// kills this very process; the test in meshctl/cli checks that through
// meshctl. (--all --yes itself is not run: it would take other people's
// labs on this machine.)
func TestLabDownAllAfterKill(t *testing.T) {
	testutil.Privileged(t)
	for _, when := range labtest.KillPoints {
		t.Run("after "+when, func(t *testing.T) {
			name := labtest.UniqueName()
			labtest.KillUpMidway(t, name, when, weftLab("up", "--name", name, "--sites", "3", "--nodes-per-site", "3", "--nat-site", "--workloads-per-node", "2"))
			before := labtest.Namespaces(t, name)
			out, errOut, code := run(t, "down", "--all")
			if code == 0 || !strings.Contains(errOut, "nothing was removed") || !strings.Contains(errOut, "--all --yes") {
				t.Errorf("lab down --all without --yes: exit %d, stderr:\n%s", code, errOut)
			}
			labtest.CheckListedForRemoval(t, out, name)
			if _, err := lab.Load(name); err != nil && when != "state" {
				t.Errorf("lab down --all without --yes removed the lab: %v", err)
			}
			if after := labtest.Namespaces(t, name); len(after) < len(before) {
				t.Errorf("lab down --all without --yes removed namespaces: %d before, %d after", len(before), len(after))
			}
			if out, errOut, code := run(t, "down", name); code != 0 {
				t.Fatalf("lab down %s: exit %d %s %s", name, code, out, errOut)
			}
			labtest.CheckRemoved(t, name)
		})
	}
}

// TestLabDownDamagedState: `lab down NAME` removes a lab whose state file
// cannot be read (lab up killed between creating the file and writing
// it), instead of sending the user to `--all --yes`, which would take
// other people's labs too.
func TestLabDownDamagedState(t *testing.T) {
	testutil.Privileged(t)
	name := labtest.UniqueName()
	path := filepath.Join("/run/weft-lab", name+".json")
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.Remove(path) })
	out, errOut, code := run(t, "down", name)
	if code != 0 || !strings.Contains(out, "damaged") {
		t.Fatalf("lab down %s with a damaged state file: exit %d\n%s%s", name, code, out, errOut)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatalf("the damaged state file is still there: %v", err)
	}
	labtest.CheckRemoved(t, name)
}

// `lab up --nat-kind symmetric` makes the last site a symmetric NAT; `lab
// cut` in one process is seen by `lab status` and undone by `lab heal` in
// others, the routers' rules following the state.
func TestLabCutHealCommands(t *testing.T) {
	testutil.Privileged(t)
	name := labtest.UniqueName()
	removeLab(t, name)
	out, errOut, code := run(t, "up", "--name", name, "--sites", "3", "--nodes-per-site", "1", "--nat-kind", "symmetric")
	if code != 0 {
		t.Fatalf("lab up: exit %d\n%s\n%s", code, out, errOut)
	}
	if !regexp.MustCompile(`site3-router .* symmetric\n`).MatchString(out) || !regexp.MustCompile(`site3-n1 .* symmetric\n`).MatchString(out) ||
		!regexp.MustCompile(`site1-router .* no\n`).MatchString(out) {
		t.Errorf("lab up --nat-kind symmetric: the table does not show the NAT kinds:\n%s", out)
	}
	if !strings.Contains(out, "meshctl lab cut --lab "+name+" site1 site3") {
		t.Errorf("lab up does not suggest a cut:\n%s", out)
	}
	if out, _, code := run(t, "exec", "--lab", name, "site3-router", "--", "nft", "list", "table", "ip", "weft-lab"); code != 0 || !strings.Contains(out, "masquerade random") {
		t.Errorf("the symmetric NAT router's rules (exit %d):\n%s", code, out)
	}
	cutTable := func(router string) bool {
		_, _, code := run(t, "exec", "--lab", name, router, "--", "nft", "list", "table", "ip", "weft-lab-cut")
		return code == 0
	}
	status := func() lab.Status {
		t.Helper()
		out, errOut, code := run(t, "status", name, "-o", "json")
		var st lab.Status
		if code != 0 || json.Unmarshal([]byte(out), &st) != nil {
			t.Fatalf("lab status -o json: exit %d\n%s%s", code, out, errOut)
		}
		return st
	}

	if out, errOut, code = run(t, "cut", "--lab", name, "site3", "site1"); code != 0 || !strings.Contains(out, "Cut site3 <-> site1 in lab "+name) || !strings.Contains(out, "meshctl lab heal --lab "+name+" site3 site1") {
		t.Fatalf("lab cut: exit %d\n%s%s", code, out, errOut)
	}
	if !cutTable("site1-router") || !cutTable("site3-router") || cutTable("site2-router") {
		t.Errorf("cut tables: site1 %t site3 %t site2 %t, want true true false", cutTable("site1-router"), cutTable("site3-router"), cutTable("site2-router"))
	}
	if out, _, code = run(t, "status", name); code != 0 || !strings.Contains(out, "\nCut (the routers drop all UDP between them; 'meshctl lab heal --lab "+name+" SITE_A SITE_B' undoes it):\n  site1 <-> site3\n") {
		t.Errorf("lab status does not show the cut (exit %d):\n%s", code, out)
	}
	if st := status(); !reflect.DeepEqual(st.Cuts, []lab.Cut{{A: "site1", B: "site3"}}) || st.Routers[2].NATKind != lab.NATSymmetric {
		t.Errorf("status json: cuts %v, routers %+v", st.Cuts, st.Routers)
	}
	if out, _, code = run(t, "cut", "site1", "site3", "--lab", name); code != 0 || !strings.Contains(out, "was cut already: nothing changed") {
		t.Errorf("lab cut twice: exit %d %s", code, out)
	}
	if out, _, code = run(t, "cut", "--lab", name, "site1", "site2", "-o", "json"); code != 0 ||
		!strings.Contains(out, `"cuts": [`) || !strings.Contains(out, `"a": "site1",`) || !strings.Contains(out, `"b": "site2"`) {
		t.Errorf("lab cut -o json: exit %d %s", code, out)
	}
	if _, errOut, code = run(t, "cut", "--lab", name, "site1", "site9"); code == 0 || !strings.Contains(errOut, `no site "site9" (sites: site1, site2, site3)`) {
		t.Errorf("lab cut to an unknown site: exit %d %s", code, errOut)
	}
	if _, errOut, code = run(t, "cut", "--lab", name, "site2", "site2"); code == 0 || !strings.Contains(errOut, "never cut from itself") {
		t.Errorf("lab cut of a site from itself: exit %d %s", code, errOut)
	}

	if out, errOut, code = run(t, "heal", "--lab", name, "site1", "site3"); code != 0 || !strings.Contains(out, "Healed site1 <-> site3 in lab "+name) {
		t.Fatalf("lab heal: exit %d\n%s%s", code, out, errOut)
	}
	if cutTable("site3-router") || !cutTable("site1-router") || !cutTable("site2-router") {
		t.Errorf("cut tables after heal: site3 %t, site1 %t, site2 %t, want false true true", cutTable("site3-router"), cutTable("site1-router"), cutTable("site2-router"))
	}
	if out, _, code = run(t, "heal", "--lab", name, "site1", "site3"); code != 0 || !strings.Contains(out, "was not cut: nothing changed") {
		t.Errorf("lab heal twice: exit %d %s", code, out)
	}
	if out, _, code = run(t, "heal", "--lab", name, "--all", "-o", "json"); code != 0 || !strings.Contains(out, `"cuts": []`) {
		t.Errorf("lab heal --all -o json: exit %d %s", code, out)
	}
	if st := status(); len(st.Cuts) != 0 || cutTable("site1-router") || cutTable("site2-router") {
		t.Errorf("after heal --all: cuts %v, cut tables site1 %t site2 %t", st.Cuts, cutTable("site1-router"), cutTable("site2-router"))
	}
	if out, _, code = run(t, "heal", "--all", "--lab", name); code != 0 || !strings.Contains(out, "has no cuts: nothing changed") {
		t.Errorf("lab heal --all with no cuts: exit %d %s", code, out)
	}
	if out, errOut, code = run(t, "down", name); code != 0 {
		t.Fatalf("lab down: exit %d %s %s", code, out, errOut)
	}
	labtest.CheckRemoved(t, name)
}
