package weft

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/terraform-plugin-framework/providerserver"
	"github.com/hashicorp/terraform-plugin-go/tfprotov6"

	"github.com/weftmesh/weft/agent/api"
	"github.com/weftmesh/weft/internal/lab"
	"github.com/weftmesh/weft/internal/lab/labtest"
	"github.com/weftmesh/weft/internal/netnsdial"
	"github.com/weftmesh/weft/internal/tftest"
)

// factories serve this package's provider in the test process (protocol 6).
var factories = map[string]func() (tfprotov6.ProviderServer, error){
	"weft": providerserver.NewProtocol6WithError(New("test")()),
}

// accEnv points terraform-plugin-testing at the terraform that make
// terraform-tools built, offline. Without TF_ACC the acceptance tests skip.
func accEnv(t *testing.T) {
	t.Helper()
	if os.Getenv("TF_ACC") == "" {
		t.Skip("acceptance test: set TF_ACC=1 (make test does)")
	}
	home := tftest.Home()
	if os.Getenv("TF_ACC_TERRAFORM_PATH") == "" {
		t.Setenv("TF_ACC_TERRAFORM_PATH", tftest.Require(t))
	}
	t.Setenv("TF_CLI_CONFIG_FILE", filepath.Join(home, "terraformrc"))
	t.Setenv("CHECKPOINT_DISABLE", "1")
}

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

// binaries builds meshctl, weft-agent and weft-lab of this checkout once
// per test process.
func binaries(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "weft-tfacc-bin-")
		if buildErr != nil {
			return
		}
		for _, b := range []struct{ out, pkg string }{
			{"meshctl", "./meshctl"}, {"weft-agent", "./agent/cmd/weft-agent"}, {"weft-lab", "./internal/lab/cmd/weft-lab"},
		} {
			cmd := exec.Command("go", "build", "-o", filepath.Join(binDir, b.out), b.pkg)
			cmd.Dir = "../../.." // the main module
			if out, err := cmd.CombinedOutput(); err != nil {
				buildErr = fmt.Errorf("building %s: %v\n%s", b.pkg, err, out)
				return
			}
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binDir
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// mesh is a lab with seeds and joined nodes run by the real meshctl.
type mesh struct {
	t       *testing.T
	lab     *lab.Lab
	bin     string
	pinRoot string
	nodes   map[string]*meshNode
}

type meshNode struct {
	name, netns, dir, socket, config string
	token                            string // the join token meshctl up printed (seeds)
	proc                             *lab.Process
}

func newMesh(t *testing.T, spec *lab.Spec) *mesh {
	t.Helper()
	bin := binaries(t)
	m := &mesh{t: t, bin: bin, nodes: map[string]*meshNode{}}
	// Registered before the lab's teardown, so it runs after it stopped
	// every agent: the bpffs pins outlive an agent by design.
	t.Cleanup(func() {
		if m.pinRoot != "" {
			if err := os.RemoveAll(m.pinRoot); err != nil {
				t.Errorf("removing pins: %v", err)
			}
		}
	})
	m.lab = labtest.New(t, spec)
	m.pinRoot = "/sys/fs/bpf/weft-tfacc-" + m.lab.Name()
	return m
}

var tokenRE = regexp.MustCompile(`weft1\.[A-Za-z0-9_-]+`)

func (m *mesh) node(name string) *meshNode {
	ln := m.lab.Node(name)
	if ln == nil {
		m.t.Fatalf("lab has no node %q", name)
	}
	dir := filepath.Join(m.t.TempDir(), name)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		m.t.Fatal(err)
	}
	n := &meshNode{name: name, netns: ln.Netns, dir: dir, socket: filepath.Join(dir, "agent.sock"), config: filepath.Join(dir, "agent.yaml")}
	m.nodes[name] = n
	return n
}

func (m *mesh) agentArgs(n *meshNode) []string {
	h := sha256.Sum256([]byte(m.lab.Name()))
	wg := fmt.Sprintf("t%x-%s", h[:2], n.name)
	if len(wg) > 15 {
		wg = wg[:15]
	}
	return []string{"--socket", n.socket, "--state-dir", n.dir, "--config-file", n.config,
		"--agent-binary", filepath.Join(m.bin, "weft-agent"), "--foreground",
		"--", "--wg-interface", wg, "--bpf-pin-path", m.pinRoot, "--wg-mode", "userspace", "--lease-ttl", "5s", "--wg-keepalive", "5s"}
}

// up runs 'meshctl up' on a node; agentFlags go to the agent.
func (m *mesh) up(name string, upFlags []string, agentFlags ...string) *meshNode {
	m.t.Helper()
	n := m.node(name)
	args := append([]string{filepath.Join(m.bin, "meshctl"), "up", "--name", name, "--advertise-address", m.lab.Node(name).Underlay.String(), "--token-max-uses", "10"}, upFlags...)
	args = append(append(args, m.agentArgs(n)...), agentFlags...)
	p, err := m.lab.Start(n.netns, "agent-"+name, args...)
	if err != nil {
		m.t.Fatalf("meshctl up on %s: %v", name, err)
	}
	n.proc = p
	m.wait(p, tokenRE, 90*time.Second, "meshctl up on "+name)
	n.token = tokenRE.FindString(p.Output())
	return n
}

// join runs 'meshctl join' with the seed's token.
func (m *mesh) join(name string, seed *meshNode) *meshNode {
	m.t.Helper()
	n := m.node(name)
	args := append([]string{filepath.Join(m.bin, "meshctl"), "join", seed.token, "--name", name}, m.agentArgs(n)...)
	p, err := m.lab.Start(n.netns, "agent-"+name, args...)
	if err != nil {
		m.t.Fatalf("meshctl join on %s: %v", name, err)
	}
	n.proc = p
	m.wait(p, regexp.MustCompile(`(?i)agent .*(ready|running)|Joined the mesh`), 90*time.Second, "meshctl join on "+name)
	return n
}

func (m *mesh) wait(p *lab.Process, re *regexp.Regexp, timeout time.Duration, what string) {
	m.t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if re.MatchString(p.Output()) {
			return
		}
		select {
		case <-p.Done():
			m.t.Fatalf("waiting for %s: the process exited (%v):\n%s", what, p.Err(), p.Output())
		case <-time.After(100 * time.Millisecond):
		}
	}
	m.t.Fatalf("waiting for %s: timed out after %s:\n%s", what, timeout, p.Output())
}

// meshctl runs meshctl on a node against its agent.
func (m *mesh) meshctl(n *meshNode, args ...string) string {
	m.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	full := append([]string{"env", "WEFT_SOCKET=" + n.socket, "WEFT_CONFIG=" + n.config, filepath.Join(m.bin, "meshctl")}, args...)
	out, err := m.lab.Exec(ctx, n.netns, full...)
	if err != nil {
		m.t.Fatalf("meshctl %v on %s: %v\n%s", args, n.name, err, out)
	}
	return string(out)
}

// credential makes an admin credential on a seed; the file is in the
// test's temp dir, which the lab's processes share (one filesystem).
func (m *mesh) credential(seed *meshNode, name string) string {
	m.t.Helper()
	file := filepath.Join(m.t.TempDir(), name+".json")
	m.meshctl(seed, "admin", "credential", "create", name, "--out", file, "--ttl", "2h")
	return file
}

// admin is the test's own client of a seed's admin API, for checks
// against what the provider did.
func (m *mesh) admin(seed *meshNode, credFile string) *api.Client {
	m.t.Helper()
	cred, err := api.LoadAdminCredential(credFile)
	if err != nil {
		m.t.Fatal(err)
	}
	c, err := api.NewAdminClient(cred, "", netnsdial.Dialer(filepath.Join("/var/run/netns", seed.netns)))
	if err != nil {
		m.t.Fatal(err)
	}
	return c
}

// writeCredential writes cred modified by fn to a new file.
func writeCredential(t *testing.T, from string, fn func(*api.AdminCredential)) string {
	t.Helper()
	cred, err := api.LoadAdminCredential(from)
	if err != nil {
		t.Fatal(err)
	}
	fn(&cred)
	data, _ := json.Marshal(cred)
	file := filepath.Join(t.TempDir(), "modified.json")
	if err := os.WriteFile(file, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return file
}

// foreignCert is a client certificate and key signed by a CA of its own,
// not the mesh's.
func foreignCert(t *testing.T) (certPEM, keyPEM string) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "other CA"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "admin:intruder"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, KeyUsage: x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalECPrivateKey(key)
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})), string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}))
}
