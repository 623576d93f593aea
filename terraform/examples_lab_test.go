// The lab example (examples/lab) applied for real: as root, with the
// repository's meshctl, weft-agent and weft-lab, it brings up a lab mesh of
// three sites (the last behind NAT), a seed, three joined nodes with a
// workload each and a policy; the test pings between the workloads, changes
// one node's labels, and destroys it all.
package terraform_test

import (
	"bytes"
	"context"
	"crypto/sha1"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/weftmesh/weft/internal/tftest"
)

// labBin is the directory with meshctl, weft-agent and weft-lab: $WEFT_BIN,
// or the checkout's bin/ (make build).
func labBin(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("WEFT_BIN")
	if dir == "" {
		dir = filepath.Join("..", "bin")
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range []string{"meshctl", "weft-agent", "weft-lab"} {
		if _, err := os.Stat(filepath.Join(dir, b)); err != nil {
			t.Fatalf("%s/%s is missing: run make build (or set WEFT_BIN to a directory with meshctl, weft-agent and weft-lab)", dir, b)
		}
	}
	return dir
}

// requireWeftProvider fails the test, saying what to run, when the weft
// provider is not in the tools' mirror (terraform init would fail with
// "could not find weftmesh/weft").
func requireWeftProvider(t *testing.T) {
	t.Helper()
	tftest.Require(t)
	dir := filepath.Join(tftest.Home(), "mirror", "registry.terraform.io", "weftmesh", "weft", "0.1.0", "linux_amd64", "terraform-provider-weft_v0.1.0")
	if _, err := os.Stat(dir); err != nil {
		t.Fatalf("the weft provider is not in the Terraform tools' mirror (%v): run make terraform-tools, which builds terraform/provider into it", err)
	}
}

// labRun runs bin/meshctl with args and returns its combined output and
// error (nil on exit 0).
func labRun(bin string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, filepath.Join(bin, "meshctl"), args...).CombinedOutput()
	return string(out), err
}

func TestLabExample(t *testing.T) {
	if testing.Short() {
		t.Skip("the lab example applies a real lab mesh; not in -short mode")
	}
	if os.Geteuid() != 0 {
		t.Skip("the lab example builds network namespaces and needs root")
	}
	bin := labBin(t)
	name := fmt.Sprintf("tf%08x", rand.Uint32())
	state, pins := "/run/weft-"+name, "/sys/fs/bpf/weft-"+name

	// Registered before tftest.New, so it runs after the harness's own
	// cleanup destroy: whatever that left (or a test that failed before
	// apply finished) goes with the lab, its processes and its paths.
	t.Cleanup(func() {
		if _, err := labRun(bin, "lab", "status", name); err != nil {
			return
		}
		if out, err := labRun(bin, "lab", "down", name); err != nil {
			t.Errorf("cleanup: meshctl lab down %s: %v\n%s", name, err, out)
		}
	})

	requireWeftProvider(t)
	w := tftest.New(t, root, "examples/lab")
	// Runs before the harness's destroy: terraform hides the joins' output
	// (they take a token), so a failed test shows meshctl's from their logs.
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		logs, _ := filepath.Glob(filepath.Join(state, "logs", "*.log"))
		for _, l := range logs {
			data, _ := os.ReadFile(l)
			t.Logf("%s:\n%s", l, data)
		}
	})
	w.Init()
	w.Validate()
	w.FmtCheck()

	vars := tftest.Vars{"lab_name": name, "bin_dir": bin, "sites": 3, "nodes_per_site": 1, "workloads_per_node": 1, "nat_site": true}
	nodes := []string{"site1-n1", "site2-n1", "site3-n1"}
	workloads := []string{"site1-n1-w1", "site2-n1-w1", "site3-n1-w1"}

	t.Run("validation", func(t *testing.T) {
		cases := []struct {
			vars tftest.Vars
			want string
		}{
			{tftest.Vars{"lab_name": "Lab-1", "bin_dir": bin}, "The lab name must be 1-16 lower-case letters and digits"},
			{tftest.Vars{"lab_name": name, "bin_dir": "bin"}, "bin_dir must be an absolute path"},
			{tftest.Vars{"lab_name": name, "bin_dir": bin, "nat_kind": "full-cone"}, "nat_kind must be eim or symmetric"},
			{tftest.Vars{"lab_name": name, "bin_dir": bin, "node_labels": map[string]any{"site1-n1": map[string]string{"bad key!": "x"}}}, "A node label is not valid"},
			{tftest.Vars{"lab_name": name, "bin_dir": bin, "node_labels": map[string]any{"site9-n1": map[string]string{"a": "b"}}}, "node_labels names nodes this lab does not have (site9-n1)"},
		}
		for _, c := range cases {
			path := filepath.Join(t.TempDir(), "v.tfvars.json")
			data, _ := json.Marshal(c.vars)
			if err := os.WriteFile(path, data, 0o600); err != nil {
				t.Fatal(err)
			}
			code, out := w.RunErr("plan", "-input=false", "-no-color", "-var-file="+path)
			flat := strings.Join(strings.Fields(strings.ReplaceAll(out, "│", "")), " ")
			if code == 0 || !strings.Contains(flat, c.want) {
				t.Errorf("plan with %v: exit %d, want a failure saying %q:\n%s", c.vars, code, c.want, out)
			}
		}
	})

	// The plan: what will be made, and the lab's topology and policy.
	p := w.Plan(vars)
	want := []string{"terraform_data.lab", "terraform_data.seed", "weft_policy.lab[0]"}
	for _, n := range nodes {
		want = append(want, `terraform_data.join["`+n+`"]`, `weft_token.node["`+n+`"]`)
	}
	for _, wl := range workloads {
		want = append(want, `terraform_data.workload["`+wl+`"]`)
	}
	var got []string
	for _, rc := range p.ResourceChanges {
		got = append(got, rc.Address)
		if !slices.Equal(rc.Actions, []string{"create"}) {
			t.Errorf("%s: actions %v, want create", rc.Address, rc.Actions)
		}
	}
	sort.Strings(got)
	sort.Strings(want)
	if !slices.Equal(got, want) {
		t.Fatalf("plan makes %v, want %v", got, want)
	}
	checkTopology(t, p.Change(t, "terraform_data.lab"), name)
	checkPolicy(t, p.Change(t, "weft_policy.lab[0]"))
	ifaces := map[string]bool{}
	for _, n := range nodes {
		tr := triggers(t, p.Change(t, `terraform_data.join["`+n+`"]`))
		ifc, _ := tr["wg_iface"].(string)
		if ifc == "" || len(ifc) > 15 || ifaces[ifc] {
			t.Errorf("join %s: WireGuard device %q: want a name of at most 15 bytes, unique in the lab", n, ifc)
		}
		ifaces[ifc] = true
		tok := p.Change(t, `weft_token.node["`+n+`"]`)
		site, _, _ := strings.Cut(n, "-")
		if labels, _ := tok.After["labels"].(map[string]any); len(labels) != 1 || labels["site"] != site {
			t.Errorf("token of %s: labels %v, want site=%s", n, tok.After["labels"], site)
		}
		if tok.After["max_uses"] != float64(1) {
			t.Errorf("token of %s: max_uses %v, want 1 (single use)", n, tok.After["max_uses"])
		}
		if v, known := tok.After["token"]; known {
			t.Errorf("token of %s: the plan knows its secret (%v); it must be known only after apply", n, v)
		}
	}

	start := time.Now()
	w.Apply(vars)
	t.Logf("apply: %v", time.Since(start).Round(time.Millisecond))

	seedSock := filepath.Join(state, "seed", "agent.sock")
	ips := workloadIPs(t, bin, seedSock, name, workloads)
	pingMatrix(t, bin, name, workloads, ips)
	w.PlanIsEmpty(vars)

	// The admin credential the seed wrote for the provider.
	if fi, err := os.Stat(filepath.Join(state, "admin.json")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("admin credential %s: %v (mode %v), want a 0600 file", filepath.Join(state, "admin.json"), err, fi)
	}

	// A changed topology: site2-n1 gets a label. Only its token, its join
	// (a rejoin with the new token) and its workload are replaced; the lab,
	// the seed, the other nodes and workloads and the policy stay.
	pids := map[string]int{}
	for _, n := range append([]string{"seed"}, nodes...) {
		pids[n] = agentPID(t, state, n)
	}
	changed := tftest.Vars{}
	for k, v := range vars {
		changed[k] = v
	}
	changed["node_labels"] = map[string]any{"site2-n1": map[string]string{"tier": "db"}}
	p = w.Plan(changed)
	for _, rc := range p.ResourceChanges {
		replace := rc.Address == `weft_token.node["site2-n1"]` || rc.Address == `terraform_data.join["site2-n1"]` || rc.Address == `terraform_data.workload["site2-n1-w1"]`
		if replace != slices.Equal(rc.Actions, []string{"delete", "create"}) || !replace && !slices.Equal(rc.Actions, []string{"no-op"}) {
			t.Errorf("changed label: %s: actions %v, want %s", rc.Address, rc.Actions, map[bool]string{true: "delete, create", false: "no-op"}[replace])
		}
	}
	start = time.Now()
	w.Apply(changed)
	t.Logf("apply of the changed label: %v", time.Since(start).Round(time.Millisecond))
	for n, before := range pids {
		after := agentPID(t, state, n)
		if (n == "site2-n1") == (after == before) {
			t.Errorf("agent of %s: pid %d before the change, %d after: want a new agent for site2-n1 only", n, before, after)
		}
		pids[n] = after
	}
	if labels := nodeLabels(t, bin, seedSock, "site2-n1"); labels["vm:tier"] != "db" || labels["vm:site"] != "site2" {
		t.Errorf("site2-n1 rejoined with labels %v, want vm:tier=db and vm:site=site2 among them", labels)
	}
	ips = workloadIPs(t, bin, seedSock, name, workloads)
	pingMatrix(t, bin, name, workloads, ips)
	w.PlanIsEmpty(changed)

	// One more node per site is a new lab: the lab is replaced, and every
	// join with it (their triggers name the lab's id). Planned only.
	more := tftest.Vars{}
	for k, v := range changed {
		more[k] = v
	}
	more["nodes_per_site"] = 2
	p = w.Plan(more)
	for _, addr := range []string{"terraform_data.lab", "terraform_data.seed", `weft_token.node["site1-n1"]`, `terraform_data.join["site1-n1"]`, `terraform_data.workload["site3-n1-w1"]`, "weft_policy.lab[0]"} {
		if rc := p.Change(t, addr); !slices.Equal(rc.Actions, []string{"delete", "create"}) {
			t.Errorf("one more node per site: %s: actions %v, want delete, create", addr, rc.Actions)
		}
	}
	if rc := p.Change(t, `terraform_data.join["site3-n2"]`); !slices.Equal(rc.Actions, []string{"create"}) {
		t.Errorf("one more node per site: join of site3-n2: actions %v, want create", rc.Actions)
	}

	start = time.Now()
	w.Destroy(changed)
	t.Logf("destroy: %v", time.Since(start).Round(time.Millisecond))
	checkNothingLeft(t, bin, name, state, pins, pids)
}

// triggers is a terraform_data's planned triggers_replace (an object).
func triggers(t *testing.T, rc tftest.ResourceChange) map[string]any {
	t.Helper()
	tr, ok := rc.After["triggers_replace"].(map[string]any)
	if !ok {
		t.Fatalf("%s: triggers_replace is %T, want an object", rc.Address, rc.After["triggers_replace"])
	}
	return tr
}

// checkTopology checks the lab's planned spec: three sites, the seed first
// on site1, one node and one workload per site, the last site behind eim NAT.
func checkTopology(t *testing.T, rc tftest.ResourceChange, name string) {
	t.Helper()
	var topo struct {
		Name  string `json:"name"`
		Sites []struct {
			Name, NAT string
			Nodes     []struct {
				Name      string
				Workloads []struct{ Name string }
			}
		}
	}
	raw, _ := triggers(t, rc)["topology"].(string)
	if err := json.Unmarshal([]byte(raw), &topo); err != nil {
		t.Fatalf("lab topology is not JSON: %v\n%s", err, raw)
	}
	if topo.Name != name || len(topo.Sites) != 3 {
		t.Fatalf("topology %s with %d sites, want %s with 3:\n%s", topo.Name, len(topo.Sites), name, raw)
	}
	for i, s := range topo.Sites {
		wantNAT := map[bool]string{true: "eim", false: "none"}[i == 2]
		var names []string
		for _, n := range s.Nodes {
			names = append(names, n.Name)
			for _, wl := range n.Workloads {
				names = append(names, wl.Name)
			}
		}
		wantNames := []string{fmt.Sprintf("site%d-n1", i+1), fmt.Sprintf("site%d-n1-w1", i+1)}
		if i == 0 {
			wantNames = append([]string{"seed"}, wantNames...)
		}
		if s.Name != fmt.Sprintf("site%d", i+1) || s.NAT != wantNAT || !slices.Equal(names, wantNames) {
			t.Errorf("site %d: %s nat %s with %v, want site%d nat %s with %v", i, s.Name, s.NAT, names, i+1, wantNAT, wantNames)
		}
	}
}

// checkPolicy checks the planned policy document: site1 isolated, open to site2.
func checkPolicy(t *testing.T, rc tftest.ResourceChange) {
	t.Helper()
	doc, _ := rc.After["document"].(string)
	var pol struct {
		Kind     string
		Metadata struct{ Name string }
		Spec     struct {
			EndpointSelector struct {
				MatchLabels map[string]string `yaml:"matchLabels"`
			} `yaml:"endpointSelector"`
			Ingress []struct {
				From []struct {
					MatchLabels map[string]string `yaml:"matchLabels"`
				}
			}
		}
	}
	if err := yaml.Unmarshal([]byte(doc), &pol); err != nil {
		t.Fatalf("policy document is not YAML: %v\n%s", err, doc)
	}
	if rc.After["name"] != "lab-site1" {
		t.Errorf("weft_policy name %v, want lab-site1", rc.After["name"])
	}
	if pol.Kind != "Policy" || pol.Metadata.Name != "lab-site1" || pol.Spec.EndpointSelector.MatchLabels["site"] != "site1" ||
		len(pol.Spec.Ingress) != 1 || len(pol.Spec.Ingress[0].From) != 1 || pol.Spec.Ingress[0].From[0].MatchLabels["site"] != "site2" {
		t.Errorf("policy document: want lab-site1 selecting site=site1 with ingress from site=site2:\n%s", doc)
	}
}

// workloadIPs asks the seed for the mesh address of each workload's endpoint.
func workloadIPs(t *testing.T, bin, seedSock, lab string, workloads []string) map[string]string {
	t.Helper()
	out, err := labRun(bin, "endpoints", "-o", "json", "--socket", seedSock)
	if err != nil {
		t.Fatalf("meshctl endpoints on the seed: %v\n%s", err, out)
	}
	var eps []struct{ Name, IP string }
	if err := json.Unmarshal([]byte(out), &eps); err != nil {
		t.Fatalf("meshctl endpoints -o json: %v\n%s", err, out)
	}
	ips := map[string]string{}
	for _, wl := range workloads {
		for _, e := range eps {
			if e.Name == "wl-"+lab+"-"+wl {
				ips[wl] = e.IP
			}
		}
		if ips[wl] == "" {
			t.Fatalf("the seed lists no endpoint for workload %s:\n%s", wl, out)
		}
	}
	return ips
}

// pingMatrix pings every workload from every other. The policy isolates
// site1's workloads so that only site2's reach them: site3 -> site1 must
// get no answer, every other pair must.
func pingMatrix(t *testing.T, bin, lab string, workloads []string, ips map[string]string) {
	t.Helper()
	site := func(wl string) string { s, _, _ := strings.Cut(wl, "-"); return s }
	ping := func(from, to string, count int) bool {
		_, err := labRun(bin, "lab", "exec", "--lab", lab, from, "--", "ping", "-n", "-q", "-c", strconv.Itoa(count), "-W", "1", ips[to])
		return err == nil
	}
	start := time.Now()
	var denied [][2]string
	for _, from := range workloads {
		for _, to := range workloads {
			if from == to {
				continue
			}
			if site(to) == "site1" && site(from) != "site2" {
				denied = append(denied, [2]string{from, to})
				continue
			}
			// Joins return at the first handshake; the other pairs
			// (the NAT'd node's above all) follow within moments.
			deadline := time.Now().Add(30 * time.Second)
			for !ping(from, to, 1) {
				if time.Now().After(deadline) {
					t.Errorf("ping %s -> %s (%s): no answer after 30s; the policy allows it", from, to, ips[to])
					break
				}
			}
		}
	}
	// Now that the mesh answers, a denied pair's silence is the policy.
	for _, d := range denied {
		if ping(d[0], d[1], 3) {
			t.Errorf("ping %s -> %s (%s) answered; the policy denies it", d[0], d[1], ips[d[1]])
		}
	}
	t.Logf("ping matrix: %d pairs allowed, %d denied (%v)", len(workloads)*(len(workloads)-1)-len(denied), len(denied), time.Since(start).Round(time.Millisecond))
}

// agentPID is the pid of a lab node's background agent (its agent.pid).
func agentPID(t *testing.T, state, node string) int {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(state, node, "agent.pid"))
	if err != nil {
		t.Fatalf("agent of %s: %v", node, err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil {
		t.Fatalf("agent of %s: pid file: %v", node, err)
	}
	return pid
}

// nodeLabels is a node's labels as the seed lists them.
func nodeLabels(t *testing.T, bin, seedSock, node string) map[string]string {
	t.Helper()
	out, err := labRun(bin, "nodes", "-o", "json", "--socket", seedSock)
	if err != nil {
		t.Fatalf("meshctl nodes on the seed: %v\n%s", err, out)
	}
	var nodes []struct {
		Name   string
		Labels map[string]string
	}
	if err := json.Unmarshal([]byte(out), &nodes); err != nil {
		t.Fatalf("meshctl nodes -o json: %v\n%s", err, out)
	}
	for _, n := range nodes {
		if n.Name == node {
			return n.Labels
		}
	}
	t.Fatalf("the seed lists no node %s:\n%s", node, out)
	return nil
}

// checkNothingLeft checks that the destroy removed the lab whole: its
// namespaces and state file, the agents (by the pids they had), their
// state dirs and pins, and their WireGuard devices' UAPI sockets.
func checkNothingLeft(t *testing.T, bin, lab, state, pins string, pids map[string]int) {
	t.Helper()
	if out, err := labRun(bin, "lab", "status", lab); err == nil {
		t.Errorf("meshctl lab status %s still shows the lab after destroy:\n%s", lab, out)
	}
	entries, err := os.ReadDir("/run/netns")
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "wl-"+lab+"-") {
			t.Errorf("namespace %s left after destroy", e.Name())
		}
	}
	for _, p := range []string{state, pins, "/run/weft-lab/" + lab + ".json", "/run/weft-lab/" + lab} {
		if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s left after destroy (%v)", p, err)
		}
	}
	for n, pid := range pids {
		// Signal 0 only asks whether the pid exists; a new process may
		// have taken the number, so only a weft-agent counts.
		if syscall.Kill(pid, 0) == nil {
			if cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); bytes.Contains(cmd, []byte("weft-agent")) {
				t.Errorf("agent of %s (pid %d) still runs after destroy", n, pid)
			}
		}
	}
	// The module names WireGuard devices w<6 hex of the lab name's sha1>-<i>.
	socks, _ := filepath.Glob("/var/run/wireguard/*.sock")
	for _, s := range socks {
		if strings.HasPrefix(filepath.Base(s), wgPrefix(lab)) {
			t.Errorf("WireGuard UAPI socket %s left after destroy", s)
		}
	}
}

// wgPrefix is the prefix of the lab's WireGuard device names, as main.tf
// derives it.
func wgPrefix(lab string) string {
	h := sha1.Sum([]byte(lab))
	return "w" + hex.EncodeToString(h[:])[:6] + "-"
}
