package install

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"

	"github.com/weftmesh/weft/cni/plugin"
)

// containerdBridge is containerd's example conflist (bridge + portmap), as
// its install script writes it.
const containerdBridge = `{
  "cniVersion": "1.0.0",
  "name": "containerd-net",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "cni0",
      "isGateway": true,
      "ipMasq": true,
      "promiscMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [
          [{
            "subnet": "10.88.0.0/16"
          }],
          [{
            "subnet": "2001:4860:4860::/64"
          }]
        ],
        "routes": [
          { "dst": "0.0.0.0/0" },
          { "dst": "::/0" }
        ]
      }
    },
    {
      "type": "portmap",
      "capabilities": {"portMappings": true}
    }
  ]
}
`

// kindnetPtp is kind's conflist (ptp + portmap), tabs and stray comma
// placement as kindnet writes it: the restore must give these bytes back.
const kindnetPtp = "{\n\t\"cniVersion\": \"0.4.0\",\n\t\"name\": \"kindnet\",\n\t\"plugins\": [\n\t{\n\t\t\"type\": \"ptp\",\n\t\t\"ipMasq\": false,\n\t\t\"ipam\": {\n\t\t\t\"type\": \"host-local\",\n\t\t\t\"dataDir\": \"/run/cni-ipam-state\",\n\t\t\t\"routes\": [\n\t\t\t\t{ \"dst\": \"0.0.0.0/0\" }\n\t\t\t],\n\t\t\t\"ranges\": [\n\t\t\t\t[ { \"subnet\": \"10.244.0.0/24\" } ]\n\t\t\t]\n\t\t}\n\t\t,\n\t\t\"mtu\": 1500\n\t},\n\t{\n\t\t\"type\": \"portmap\",\n\t\t\"capabilities\": {\n\t\t\t\"portMappings\": true\n\t\t}\n\t}\n\t]\n}\n"

// flannelConf is a single-plugin configuration (.conf).
const flannelConf = `{"name":"cbr0","cniVersion":"1.0.0","type":"flannel","delegate":{"hairpinMode":true,"isDefaultGateway":true}}`

type node struct {
	bin, conf, exe string
}

// newNode is a node's CNI directories in a temporary directory, and a
// stand-in for the weft-cni executable.
func newNode(t *testing.T) node {
	t.Helper()
	d := t.TempDir()
	n := node{bin: filepath.Join(d, "opt/cni/bin"), conf: filepath.Join(d, "etc/cni/net.d"), exe: filepath.Join(d, "weft-cni-image")}
	for _, dir := range []string{n.bin, n.conf} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(n.exe, []byte("#!weft-cni build 1\n"), 0o700); err != nil {
		t.Fatal(err)
	}
	return n
}

func (n node) opts(mode Mode) Options {
	return Options{BinDir: n.bin, ConfDir: n.conf, Mode: mode, Executable: n.exe}
}

func (n node) write(t *testing.T, name, data string, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(n.conf, name), []byte(data), mode); err != nil {
		t.Fatal(err)
	}
}

func (n node) read(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(n.conf, name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// files lists the conf dir, so a test sees every file install left.
func (n node) files(t *testing.T) []string {
	t.Helper()
	ents, err := os.ReadDir(n.conf)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

func install(t *testing.T, o Options) []string {
	t.Helper()
	did, err := Install(o)
	if err != nil {
		t.Fatalf("Install: %v (did %q)", err, did)
	}
	return did
}

func uninstall(t *testing.T, n node) []string {
	t.Helper()
	did, err := Uninstall(n.bin, n.conf)
	if err != nil {
		t.Fatalf("Uninstall: %v (did %q)", err, did)
	}
	return did
}

// weftEntries returns the conflist's weft-cni entries as the runtime
// hands them to the plugin (name and cniVersion injected), parsed by the
// plugin: what install writes is what the plugin accepts.
func weftEntries(t *testing.T, data string) (types []string, confs []*plugin.Config) {
	t.Helper()
	list, err := libcni.NetworkConfFromBytes([]byte(data))
	if err != nil {
		t.Fatalf("the runtime cannot read the conflist: %v\n%s", err, data)
	}
	for _, p := range list.Plugins {
		types = append(types, p.Network.Type)
		if p.Network.Type != plugin.Type {
			continue
		}
		inj, err := libcni.InjectConf(p, map[string]any{"name": list.Name, "cniVersion": list.CNIVersion})
		if err != nil {
			t.Fatal(err)
		}
		c, err := plugin.ParseConfig(inj.Bytes)
		if err != nil {
			t.Fatalf("weft-cni would refuse its entry: %v\n%s", err, inj.Bytes)
		}
		confs = append(confs, c)
	}
	return types, confs
}

func TestInstallPrimary(t *testing.T) {
	n := newNode(t)
	n.write(t, "10-containerd-net.conflist", containerdBridge, 0o644)
	o := n.opts(Primary)
	o.LogFile = "/var/log/weft-cni.log"
	did := install(t, o)

	want := `{
  "cniVersion": "1.0.0",
  "cniVersions": [
    "1.0.0",
    "1.1.0"
  ],
  "name": "weft",
  "plugins": [
    {
      "type": "weft-cni",
      "agentSocket": "/run/weft/agent.sock",
      "timeout": "60s",
      "logFile": "/var/log/weft-cni.log"
    }
  ]
}
`
	if got := n.read(t, PrimaryConflist); got != want {
		t.Errorf("%s:\n%s\nwant:\n%s", PrimaryConflist, got, want)
	}
	if _, confs := weftEntries(t, want); len(confs) != 1 || confs[0].AgentSocket != plugin.DefaultAgentSocket || confs[0].Timeout != plugin.DefaultTimeout {
		t.Errorf("the plugin reads its entry as %+v", confs)
	}
	bin, err := os.ReadFile(filepath.Join(n.bin, "weft-cni"))
	if err != nil || string(bin) != "#!weft-cni build 1\n" {
		t.Errorf("installed binary %q, %v", bin, err)
	}
	if fi, _ := os.Stat(filepath.Join(n.bin, "weft-cni")); fi.Mode().Perm() != 0o755 {
		t.Errorf("binary mode %v, want 0755", fi.Mode().Perm())
	}
	if got := n.read(t, "10-containerd-net.conflist"); got != containerdBridge {
		t.Error("primary mode changed the other conflist")
	}
	if !slices.Equal(did, []string{"installed " + filepath.Join(n.bin, "weft-cni"), "wrote " + filepath.Join(n.conf, PrimaryConflist)}) {
		t.Errorf("Install reported %q", did)
	}

	// Again: nothing to do. A new build: only the binary changes.
	if did := install(t, o); !slices.Equal(did, []string{"weft-cni is installed as asked: nothing to change"}) {
		t.Errorf("second Install reported %q", did)
	}
	if err := os.WriteFile(n.exe, []byte("#!weft-cni build 2\n"), 0o700); err != nil {
		t.Fatal(err)
	}
	if did := install(t, o); len(did) != 1 || !strings.HasPrefix(did[0], "installed ") {
		t.Errorf("Install of a new build reported %q", did)
	}
	if files := n.files(t); !slices.Equal(files, []string{PrimaryConflist, "10-containerd-net.conflist"}) {
		t.Errorf("conf dir holds %q: no temporary file may be left", files)
	}

	uninstall(t, n)
	if files := n.files(t); !slices.Equal(files, []string{"10-containerd-net.conflist"}) {
		t.Errorf("after Uninstall the conf dir holds %q", files)
	}
	if _, err := os.Stat(filepath.Join(n.bin, "weft-cni")); !os.IsNotExist(err) {
		t.Errorf("the binary is still there: %v", err)
	}
	if did := uninstall(t, n); !slices.Equal(did, []string{"weft-cni is not installed: nothing to remove"}) {
		t.Errorf("second Uninstall reported %q", did)
	}
}

func TestInstallChained(t *testing.T) {
	for _, tc := range []struct {
		name, file, data, after string
		types                   []string
	}{
		{"bridge", "10-containerd-net.conflist", containerdBridge, "bridge, portmap", []string{"bridge", "portmap", "weft-cni"}},
		{"ptp", "10-kindnet.conflist", kindnetPtp, "ptp, portmap", []string{"ptp", "portmap", "weft-cni"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := newNode(t)
			n.write(t, tc.file, tc.data, 0o640)
			// A file sorting later is not the one the runtime uses.
			n.write(t, "99-other.conflist", strings.Replace(containerdBridge, "containerd-net", "other", 1), 0o644)
			o := n.opts(Chained)
			o.AgentSocket = "/run/weft/agent-1.sock"
			for i := range 2 { // twice: chained once
				did := install(t, o)
				if i == 0 && !slices.Contains(did, "chained weft-cni into "+filepath.Join(n.conf, tc.file)+" (after "+tc.after+")") {
					t.Errorf("Install reported %q", did)
				}
				got := n.read(t, tc.file)
				types, confs := weftEntries(t, got)
				if !slices.Equal(types, tc.types) {
					t.Fatalf("run %d: plugins %q, want %q", i+1, types, tc.types)
				}
				if confs[0].AgentSocket != "/run/weft/agent-1.sock" || confs[0].ChainedAfter != tc.after || confs[0].Chained() {
					t.Errorf("run %d: weft-cni's entry reads %+v", i+1, confs[0])
				}
				if b := n.read(t, tc.file+BackupSuffix); b != tc.data {
					t.Errorf("run %d: backup is not the original:\n%s", i+1, b)
				}
			}
			// The other plugins' settings pass through as they were.
			var before, after struct{ Plugins []json.RawMessage }
			_ = json.Unmarshal([]byte(tc.data), &before)
			_ = json.Unmarshal([]byte(n.read(t, tc.file)), &after)
			for i := range before.Plugins {
				if !sameJSON(before.Plugins[i], after.Plugins[i]) {
					t.Errorf("plugin %d changed:\n%s\nwas\n%s", i, after.Plugins[i], before.Plugins[i])
				}
			}
			if fi, _ := os.Stat(filepath.Join(n.conf, tc.file)); fi.Mode().Perm() != 0o640 {
				t.Errorf("the conflist's mode became %v", fi.Mode().Perm())
			}
			if n.read(t, "99-other.conflist") != strings.Replace(containerdBridge, "containerd-net", "other", 1) {
				t.Error("the later conflist was changed")
			}

			uninstall(t, n)
			if got := n.read(t, tc.file); got != tc.data {
				t.Errorf("Uninstall did not restore %s byte for byte:\n%q\nwant\n%q", tc.file, got, tc.data)
			}
			if fi, _ := os.Stat(filepath.Join(n.conf, tc.file)); fi.Mode().Perm() != 0o640 {
				t.Errorf("restored with mode %v", fi.Mode().Perm())
			}
			if files := n.files(t); !slices.Equal(files, []string{tc.file, "99-other.conflist"}) {
				t.Errorf("after Uninstall the conf dir holds %q", files)
			}
			uninstall(t, n)
			if got := n.read(t, tc.file); got != tc.data {
				t.Error("a second Uninstall changed the restored file")
			}
		})
	}
}

func TestInstallChainInto(t *testing.T) {
	n := newNode(t)
	n.write(t, "10-containerd-net.conflist", containerdBridge, 0o644)
	n.write(t, "20-kindnet.conflist", kindnetPtp, 0o644)
	for _, into := range []string{"kindnet", "20-kindnet.conflist"} { // a network's name, a file's
		o := n.opts(Chained)
		o.ChainInto = into
		install(t, o)
		if types, _ := weftEntries(t, n.read(t, "20-kindnet.conflist")); !slices.Equal(types, []string{"ptp", "portmap", "weft-cni"}) {
			t.Errorf("--chain-into %s: 20-kindnet.conflist has %q", into, types)
		}
		if n.read(t, "10-containerd-net.conflist") != containerdBridge {
			t.Errorf("--chain-into %s changed the first conflist", into)
		}
	}
	// Moving the chain to another conflist restores the first.
	o := n.opts(Chained)
	o.ChainInto = "containerd-net"
	install(t, o)
	if n.read(t, "20-kindnet.conflist") != kindnetPtp {
		t.Error("chaining into another conflist left weft-cni in the previous one")
	}
	if types, _ := weftEntries(t, n.read(t, "10-containerd-net.conflist")); !slices.Equal(types, []string{"bridge", "portmap", "weft-cni"}) {
		t.Errorf("10-containerd-net.conflist has %q", types)
	}
}

// A single-plugin .conf becomes a conflist of the same name, which sorts
// where the .conf did; uninstall puts the .conf back.
func TestInstallChainedConvertsConf(t *testing.T) {
	n := newNode(t)
	n.write(t, "10-flannel.conf", flannelConf, 0o644)
	for range 2 {
		install(t, n.opts(Chained))
	}
	if files := n.files(t); !slices.Equal(files, []string{"10-flannel.conf.weft-bak", "10-flannel.conflist"}) {
		t.Fatalf("conf dir holds %q", files)
	}
	got := n.read(t, "10-flannel.conflist")
	types, confs := weftEntries(t, got)
	if !slices.Equal(types, []string{"flannel", "weft-cni"}) || confs[0].ChainedAfter != "flannel" {
		t.Errorf("10-flannel.conflist has %q:\n%s", types, got)
	}
	list, _ := libcni.NetworkConfFromBytes([]byte(got))
	if list.Name != "cbr0" || list.CNIVersion != "1.0.0" || !strings.Contains(string(list.Plugins[0].Bytes), `"delegate"`) {
		t.Errorf("the conversion lost the network's name, version or settings:\n%s", got)
	}
	uninstall(t, n)
	if files := n.files(t); !slices.Equal(files, []string{"10-flannel.conf"}) || n.read(t, "10-flannel.conf") != flannelConf {
		t.Errorf("after Uninstall: %q", files)
	}
}

func TestInstallRefuses(t *testing.T) {
	for _, tc := range []struct {
		name  string
		files map[string]string
		into  string
		err   string
	}{
		{"nothing to chain into", nil, "", "no CNI configuration in"},
		{"not JSON", map[string]string{"10-x.conflist": `{"cniVersion": "1.0.0", "name": `}, "", "10-x.conflist is not a conflist the runtime can read"},
		{"not JSON .conf", map[string]string{"10-x.conf": `{"type"`}, "", "10-x.conf is not a network configuration the runtime can read"},
		{"old cniVersion", map[string]string{"10-flannel.conflist": `{"cniVersion":"0.3.1","name":"cbr0","plugins":[{"type":"flannel"}]}`}, "", "is for CNI 0.3.1, which weft-cni does not speak"},
		{"plugins in a directory", map[string]string{"10-x.conflist": `{"cniVersion":"1.0.0","name":"x"}`}, "", "lists no plugins inline"},
		{"duplicate key", map[string]string{"10-x.conflist": `{"cniVersion":"1.0.0","name":"x","name":"y","plugins":[{"type":"ptp"}]}`}, "", `key "name" appears twice`},
		{"no such conflist", map[string]string{"10-x.conflist": containerdBridge}, "calico", "--chain-into calico: no file and no network of that name"},
		{"a path", map[string]string{"10-x.conflist": containerdBridge}, "../10-x.conflist", "not a path"},
		{"a file the runtime ignores", map[string]string{"10-x.conflist": containerdBridge, "notes.txt": "x"}, "notes.txt", "the runtime does not load that file"},
		{"conflist in the way of a conversion", map[string]string{"10-x.conf": flannelConf, "10-x.conflist": containerdBridge}, "10-x.conf", "10-x.conflist exists and is not weft-cni's"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := newNode(t)
			for name, data := range tc.files {
				n.write(t, name, data, 0o644)
			}
			before := n.files(t)
			o := n.opts(Chained)
			o.ChainInto = tc.into
			_, err := Install(o)
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("Install = %v, want an error with %q", err, tc.err)
			}
			if after := n.files(t); !slices.Equal(before, after) {
				t.Errorf("a refused install changed the conf dir: %q, was %q", after, before)
			}
			for name, data := range tc.files {
				if n.read(t, name) != data {
					t.Errorf("a refused install changed %s", name)
				}
			}
		})
	}
	n := newNode(t)
	for _, o := range []Options{
		{BinDir: n.bin, ConfDir: n.conf, Mode: "both"},
		{BinDir: n.bin, ConfDir: filepath.Join(n.conf, "missing"), Mode: Primary},
		{BinDir: n.bin, ConfDir: n.conf, Mode: Primary, ChainInto: "x"},
		{BinDir: n.bin, ConfDir: n.conf, Mode: Primary, AgentSocket: "relative.sock"},
		{BinDir: n.bin, ConfDir: n.conf, Mode: Primary, Timeout: time.Hour},
	} {
		if _, err := Install(o); err == nil {
			t.Errorf("Install(%+v) accepted", o)
		}
	}
}

// Switching modes leaves one weft-cni: primary restores the conflist
// chained into, chained removes the primary conflist.
func TestInstallSwitchesModes(t *testing.T) {
	n := newNode(t)
	n.write(t, "10-kindnet.conflist", kindnetPtp, 0o644)
	install(t, n.opts(Chained))
	install(t, n.opts(Primary))
	if n.read(t, "10-kindnet.conflist") != kindnetPtp {
		t.Error("primary mode left weft-cni chained into 10-kindnet.conflist")
	}
	if files := n.files(t); !slices.Equal(files, []string{PrimaryConflist, "10-kindnet.conflist"}) {
		t.Errorf("conf dir holds %q", files)
	}
	install(t, n.opts(Chained))
	if files := n.files(t); !slices.Equal(files, []string{"10-kindnet.conflist", "10-kindnet.conflist.weft-bak"}) {
		t.Errorf("conf dir holds %q", files)
	}
}

// The network plugin's own installer rewrites its conflist when it starts:
// uninstall keeps what it wrote instead of the older backup.
func TestUninstallKeepsTheOwnersChanges(t *testing.T) {
	n := newNode(t)
	n.write(t, "10-kindnet.conflist", kindnetPtp, 0o644)
	install(t, n.opts(Chained))
	rewritten := strings.Replace(kindnetPtp, "10.244.0.0/24", "10.244.7.0/24", 1)
	n.write(t, "10-kindnet.conflist", rewritten, 0o644)
	uninstall(t, n)
	if n.read(t, "10-kindnet.conflist") != rewritten {
		t.Error("Uninstall replaced the owner's rewrite with the old backup")
	}
	if files := n.files(t); !slices.Equal(files, []string{"10-kindnet.conflist"}) {
		t.Errorf("conf dir holds %q", files)
	}

	// Changed elsewhere but still chained: only weft-cni goes.
	install(t, n.opts(Chained))
	chained := n.read(t, "10-kindnet.conflist")
	n.write(t, "10-kindnet.conflist", strings.Replace(chained, `"mtu": 1500`, `"mtu": 1450`, 1), 0o644)
	uninstall(t, n)
	got := n.read(t, "10-kindnet.conflist")
	if types, _ := weftEntries(t, got); !slices.Equal(types, []string{"ptp", "portmap"}) || !strings.Contains(got, `"mtu": 1450`) {
		t.Errorf("after Uninstall:\n%s", got)
	}
}

func TestObjectKeepsOrder(t *testing.T) {
	in := `{"z": 1, "a": {"y": [1, 2], "b": "x"}, "m": null}`
	o, err := decodeObject([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	if got := string(o.marshal()); got != `{"z":1,"a":{"y": [1, 2], "b": "x"},"m":null}` {
		t.Errorf("marshal = %s", got)
	}
	for _, bad := range []string{`[]`, `{"a":1} {}`, `{"a":}`, ``} {
		if _, err := decodeObject([]byte(bad)); err == nil {
			t.Errorf("decodeObject(%q) accepted", bad)
		}
	}
	if !bytes.Equal(o.without("a").marshal(), []byte(`{"z":1,"m":null}`)) {
		t.Errorf("without: %s", o.without("a").marshal())
	}
}
