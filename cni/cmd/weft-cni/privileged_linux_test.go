package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/weftmesh/weft/internal/testutil"
)

// cniPluginDir holds the reference CNI plugins (Debian's
// containernetworking-plugins package).
const cniPluginDir = "/usr/lib/cni"

func needPlugin(t *testing.T, name string) string {
	t.Helper()
	p := filepath.Join(cniPluginDir, name)
	if _, err := os.Stat(p); err != nil {
		t.Skipf("needs the %s CNI plugin at %s: apt-get install containernetworking-plugins", name, p)
	}
	return p
}

// ipJSON runs `ip -j -n ns args...` and decodes its output.
func ipJSON(t *testing.T, ns string, v any, args ...string) {
	t.Helper()
	out, err := exec.Command("ip", append([]string{"-j", "-n", ns}, args...)...).Output()
	if err != nil {
		t.Fatalf("ip -n %s %s: %v", ns, strings.Join(args, " "), err)
	}
	if err := json.Unmarshal(out, v); err != nil {
		t.Fatalf("ip -n %s %s: %v: %s", ns, strings.Join(args, " "), err, out)
	}
}

// veths lists the veths of namespace ns, as the kernel has them.
func veths(t *testing.T, ns string) []string {
	t.Helper()
	var links []struct {
		Ifname string `json:"ifname"`
	}
	ipJSON(t, ns, &links, "link", "show", "type", "veth")
	var names []string
	for _, l := range links {
		names = append(names, l.Ifname)
	}
	return names
}

// ipv4Of is the IPv4 address of dev in namespace ns.
func ipv4Of(t *testing.T, ns, dev string) netip.Prefix {
	t.Helper()
	var links []struct {
		AddrInfo []struct {
			Family    string `json:"family"`
			Local     string `json:"local"`
			Prefixlen int    `json:"prefixlen"`
		} `json:"addr_info"`
	}
	ipJSON(t, ns, &links, "addr", "show", "dev", dev)
	for _, l := range links {
		for _, a := range l.AddrInfo {
			if a.Family == "inet" {
				return netip.PrefixFrom(netip.MustParseAddr(a.Local), a.Prefixlen)
			}
		}
	}
	t.Fatalf("%s in %s has no IPv4 address", dev, ns)
	return netip.Prefix{}
}

// jsonEqual reports whether two results are the same; an empty "dns" is
// no DNS (the plugins print one, libcni's result types leave it out).
func jsonEqual(a, b string) bool {
	var va, vb map[string]any
	if json.Unmarshal([]byte(a), &va) != nil || json.Unmarshal([]byte(b), &vb) != nil {
		return false
	}
	for _, m := range []map[string]any{va, vb} {
		if d, ok := m["dns"].(map[string]any); ok && len(d) == 0 {
			delete(m, "dns")
		}
	}
	ca, _ := json.Marshal(va)
	cb, _ := json.Marshal(vb)
	return bytes.Equal(ca, cb)
}

// The runtime's chain, with the real ptp and bridge plugins: each runs in
// a namespace the test made as the node ("host"), connects a pod
// namespace, and weft-cni chained after it must hand the agent the host
// end of the veth the plugin made (not the bridge) and the pod's address.
func TestChainedAfterRealPlugins(t *testing.T) {
	testutil.Slow(t)
	testutil.Privileged(t)
	for _, tc := range []struct {
		plugin, subnet, extra string
	}{
		{"ptp", "100.64.200.0/24", `"ipMasq":false`},
		{"bridge", "100.64.201.0/24", `"bridge":"cni0","isGateway":true,"ipMasq":false`},
	} {
		t.Run(tc.plugin, func(t *testing.T) {
			prevPlugin := needPlugin(t, tc.plugin)
			bin := weftCNI(t)
			host := testutil.NewNetns(t, "weft-cnitest-host")
			pod := testutil.NewNetns(t, "weft-cnitest-pod")
			netns := "/run/netns/" + pod
			inHost := []string{"ip", "netns", "exec", host}
			sock := filepath.Join(socketDir(t), "agent.sock")
			agent := &fakeAgent{}
			serveAgent(t, sock, agent)

			// The previous plugin, as the runtime runs it: host-local
			// keeps its leases in the test's directory.
			prevConf := fmt.Sprintf(`{"cniVersion":"1.0.0","name":"weftcnitest","type":%q,%s,
				"ipam":{"type":"host-local","dataDir":%q,"ranges":[[{"subnet":%q}]],"routes":[{"dst":"0.0.0.0/0"}]}}`,
				tc.plugin, tc.extra, t.TempDir(), tc.subnet)
			pc := call{cmd: "ADD", containerID: "cnitest01", netns: netns, ifName: "eth0", args: podArgs, conf: prevConf, wrap: inHost, path: cniPluginDir}
			prev := invoke(t, prevPlugin, pc)
			if prev.code != 0 {
				t.Fatalf("%s ADD:\n%s", tc.plugin, prev)
			}
			prevDeleted := false
			t.Cleanup(func() {
				if prevDeleted {
					return
				}
				pc.cmd = "DEL"
				if o := invoke(t, prevPlugin, pc); o.code != 0 {
					t.Errorf("%s DEL:\n%s", tc.plugin, o)
				}
			})

			weftConf := func(socket, prevResult string) string {
				return fmt.Sprintf(`{"cniVersion":"1.0.0","name":"weftcnitest","type":"weft-cni","agentSocket":%q,"chainedAfter":%q,"prevResult":%s}`, socket, tc.plugin, prevResult)
			}
			wc := call{cmd: "ADD", containerID: "cnitest01", netns: netns, ifName: "eth0", args: podArgs, conf: weftConf(sock, prev.stdout), wrap: inHost}
			o := invoke(t, bin, wc)
			if o.code != 0 {
				t.Fatalf("weft-cni ADD after %s:\n%s", tc.plugin, o)
			}
			if !jsonEqual(o.stdout, prev.stdout) {
				t.Errorf("weft-cni did not pass %s's result on unchanged:\n%s\nwas\n%s", tc.plugin, o.stdout, prev.stdout)
			}

			adds, _, _ := agent.requests()
			if len(adds) != 1 || adds[0].Chained == nil {
				t.Fatalf("the agent got %+v, want one chained ADD", adds)
			}
			got := *adds[0].Chained
			hostVeths := veths(t, host)
			if len(hostVeths) != 1 || got.HostIface != hostVeths[0] {
				t.Errorf("the agent was given host interface %q; the host namespace's veths are %q", got.HostIface, hostVeths)
			}
			if tc.plugin == "bridge" && (got.HostIface == "cni0" || !strings.Contains(prev.stdout, `"cni0"`)) {
				t.Errorf("host interface %q; bridge's result:\n%s", got.HostIface, prev.stdout)
			}
			podAddr := ipv4Of(t, pod, "eth0")
			if got.IP != podAddr.Addr() {
				t.Errorf("the agent was given %s; the pod's eth0 has %s", got.IP, podAddr)
			}
			if adds[0].Netns != netns || adds[0].PodNamespace != "shop" || adds[0].PodName != "web-0" {
				t.Errorf("request %+v", adds[0])
			}

			// CHECK, with the chain's result as the runtime keeps it.
			check := wc
			check.cmd, check.conf = "CHECK", weftConf(sock, o.stdout)
			if o := invoke(t, bin, check); o.code != 0 {
				t.Errorf("CHECK:\n%s", o)
			}

			// DEL while the agent is down and the pod's interface is still
			// there: the runtime must retry.
			del := wc
			del.cmd, del.conf = "DEL", weftConf(filepath.Join(socketDir(t), "agent.sock"), o.stdout)
			if e := invoke(t, bin, del).cniError(t); e.Code != 11 || !strings.Contains(e.Msg, "the Weft agent is not running on this node") {
				t.Errorf("DEL without the agent, pod still there: %+v", e)
			}
			del.conf = weftConf(sock, o.stdout)
			if o := invoke(t, bin, del); o.code != 0 {
				t.Errorf("DEL:\n%s", o)
			}
			if _, dels, _ := agent.requests(); len(dels) != 1 || dels[0].ContainerID != "cnitest01" {
				t.Errorf("the agent got DELs %+v", dels)
			}

			// The pod loses its address: CHECK says what is wrong.
			testutil.InNetns(t, pod, "ip", "addr", "del", podAddr.String(), "dev", "eth0")
			e := invoke(t, bin, check).cniError(t)
			if !strings.Contains(e.Msg, "the pod's interface is not as ADD left it") || !strings.Contains(e.Details, "does not have "+podAddr.Addr().String()) {
				t.Errorf("CHECK of a pod without its address: %+v", e)
			}

			// In a real chain the previous plugin's DEL comes after
			// weft-cni's; once it removed the pod's interface, nothing is
			// left that needs the agent, and DEL succeeds without it.
			pc.cmd = "DEL"
			if o := invoke(t, prevPlugin, pc); o.code != 0 {
				t.Fatalf("%s DEL:\n%s", tc.plugin, o)
			}
			prevDeleted = true
			del.conf = weftConf(filepath.Join(socketDir(t), "agent.sock"), o.stdout)
			if o := invoke(t, bin, del); o.code != 0 {
				t.Errorf("DEL of an emptied namespace without the agent:\n%s", o)
			}
		})
	}
}

// CHECK in primary mode looks at the pod's interface in its namespace.
func TestCheckPrimaryInNetns(t *testing.T) {
	testutil.Slow(t)
	testutil.Privileged(t)
	bin := weftCNI(t)
	host := testutil.NewNetns(t, "weft-cnitest-host")
	pod := testutil.NewNetns(t, "weft-cnitest-pod")
	netns := "/run/netns/" + pod
	// What the agent would have made: eth0 with the pod's address.
	testutil.InNetns(t, pod, "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0peer")
	testutil.InNetns(t, pod, "ip", "addr", "add", answer.IP.String()+"/32", "dev", "eth0")
	testutil.InNetns(t, pod, "ip", "link", "set", "eth0peer", "up")
	testutil.InNetns(t, pod, "ip", "link", "set", "eth0", "up")
	sock := filepath.Join(socketDir(t), "agent.sock")
	agent := &fakeAgent{result: answer}
	serveAgent(t, sock, agent)
	inHost := []string{"ip", "netns", "exec", host}

	add := invoke(t, bin, call{cmd: "ADD", containerID: "cnitest02", netns: netns, ifName: "eth0", args: podArgs, conf: conf("1.0.0", sock, ""), wrap: inHost})
	if add.code != 0 {
		t.Fatalf("ADD:\n%s", add)
	}
	check := call{cmd: "CHECK", containerID: "cnitest02", netns: netns, ifName: "eth0", args: podArgs, conf: conf("1.0.0", sock, `,"prevResult":`+add.stdout), wrap: inHost}
	if o := invoke(t, bin, check); o.code != 0 {
		t.Fatalf("CHECK:\n%s", o)
	}
	testutil.InNetns(t, pod, "ip", "link", "set", "eth0", "down")
	if e := invoke(t, bin, check).cniError(t); !strings.Contains(e.Details, "eth0 in the pod's namespace "+netns+" is down") {
		t.Errorf("CHECK of a pod whose eth0 is down: %+v", e)
	}
	testutil.InNetns(t, pod, "ip", "link", "del", "eth0")
	if e := invoke(t, bin, check).cniError(t); !strings.Contains(e.Details, "has no interface eth0") {
		t.Errorf("CHECK of a pod without eth0: %+v", e)
	}
	// Nothing left of the pod: DEL succeeds without the agent.
	del := call{cmd: "DEL", containerID: "cnitest02", netns: netns, ifName: "eth0", conf: conf("1.0.0", filepath.Join(socketDir(t), "agent.sock"), ""), wrap: inHost}
	if o := invoke(t, bin, del); o.code != 0 {
		t.Errorf("DEL of an empty namespace without the agent:\n%s", o)
	}
	if _, _, checks := agent.requests(); len(checks) != 3 {
		t.Errorf("the agent got %d CHECKs, want 3", len(checks))
	}
}
