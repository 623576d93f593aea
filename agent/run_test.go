package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/weftmesh/weft/agent/api"
	"github.com/weftmesh/weft/agent/config"
	"github.com/weftmesh/weft/agent/flowcollect"
	"github.com/weftmesh/weft/bpf"
	"github.com/weftmesh/weft/bpf/bpftest"
	"github.com/weftmesh/weft/identity"
	"github.com/weftmesh/weft/internal/testutil"
	"github.com/weftmesh/weft/kvstore/kvstoretest"
	"github.com/weftmesh/weft/tunnel"
	"github.com/weftmesh/weft/tunnel/tunneltest"
)

// The fakes are checked against the interfaces the agent declares.
var (
	_ Device      = (*tunneltest.Device)(nil)
	_ Datapath    = fakeDatapath{}
	_ vethPlumber = (*fakeVeths)(nil)
)

// fakeDatapath gives bpftest's event stream the agent's interface type.
type fakeDatapath struct{ *bpftest.Datapath }

func (f fakeDatapath) Events() (flowcollect.EventSource, error) { return f.Datapath.Events() }

// testNode is one agent running unprivileged: real etcd, real caches,
// reconcilers and API, with an in-memory tunnel, datapath and veths.
type testNode struct {
	name   string
	cfg    *config.Config
	dev    *tunneltest.Device
	dp     *bpftest.Datapath
	veths  *fakeVeths
	agent  *Agent
	client *api.Client
	cancel context.CancelFunc
	done   chan error
}

// newTestNode prepares node idx of a test mesh on srv; start runs it.
func newTestNode(t *testing.T, srv *kvstoretest.Server, name string, idx int) *testNode {
	t.Helper()
	cfg := config.Default()
	cfg.NodeName = name
	cfg.Cluster = "default"
	cfg.StateDir = t.TempDir()
	// A unix socket path must stay short (108 bytes); TempDir's may not.
	sockDir, err := os.MkdirTemp("", "weft-agent")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	cfg.SocketPath = filepath.Join(sockDir, "agent.sock")
	cfg.Etcd.Endpoints = srv.Config.Endpoints
	cfg.Etcd.CAFile, cfg.Etcd.CertFile, cfg.Etcd.KeyFile = srv.Config.CAFile, srv.Config.CertFile, srv.Config.KeyFile
	cfg.WireGuard.Interface = "wt-" + name
	cfg.Underlay.Endpoints = []string{fmt.Sprintf("127.0.0.1:%d", 40000+idx)}
	cfg.Metrics.Address = ""
	return &testNode{name: name, cfg: cfg, dev: tunneltest.New("wt-"+name, 40000+idx), dp: bpftest.New(), veths: newFakeVeths(), client: api.NewClient(cfg.SocketPath)}
}

// start runs the agent until the test ends (or stop), and waits until its
// API answers.
func (n *testNode) start(t *testing.T) {
	t.Helper()
	a, err := New(n.cfg, Options{
		Logger:       slog.New(slog.NewTextHandler(testWriter{t, n.name}, &slog.HandlerOptions{Level: slog.LevelWarn})),
		OpenTunnel:   func(ctx context.Context, c tunnel.Config) (Device, error) { return n.dev.Open(ctx, c) },
		OpenDatapath: func(bpf.Config) (Datapath, error) { return fakeDatapath{n.dp.Reopen()}, nil },
		veths:        n.veths,
		// The health prober and the agent-to-agent API bind the mesh IP,
		// which only a real device holds.
		noObservability: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	n.agent, n.cancel, n.done = a, cancel, make(chan error, 1)
	go func() { n.done <- a.Run(ctx) }()
	t.Cleanup(func() { n.stop(t) })
	testutil.Eventually(t, 30*time.Second, "the expected state", func() error {
		select {
		case err := <-n.done:
			n.done <- err
			t.Fatalf("agent %s exited while starting: %v", n.name, err)
		default:
		}
		_, err := n.client.Status(context.Background())
		return err
	})
}

// stop ends the agent as SIGTERM would and returns Run's result.
func (n *testNode) stop(t *testing.T) error {
	if n.cancel == nil {
		return nil
	}
	n.cancel()
	n.cancel = nil
	select {
	case err := <-n.done:
		return err
	case <-time.After(30 * time.Second):
		t.Errorf("agent %s did not stop within 30s", n.name)
		return nil
	}
}

type testWriter struct {
	t    *testing.T
	node string
}

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Logf("%s: %s", w.node, strings.TrimSpace(string(p)))
	return len(p), nil
}

// peerFor returns the device's peer with key.
func peerFor(dev *tunneltest.Device, key string) (tunnel.Peer, bool) {
	for _, p := range dev.Peers() {
		if p.PublicKey == key {
			return p, true
		}
	}
	return tunnel.Peer{}, false
}

func TestAgentsMeshOnFakes(t *testing.T) {
	srv := kvstoretest.StartEmbedded(t)
	a := newTestNode(t, srv, "a1", 1)
	b := newTestNode(t, srv, "b1", 2)
	a.start(t)
	b.start(t)
	ctx := context.Background()

	// Each node's device gets the other as its only peer, with the
	// other's CIDR and endpoint, and every node's mesh IP its host identity.
	sa, err := a.client.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	sb, err := b.client.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if sa.CIDRs[0] == sb.CIDRs[0] {
		t.Fatalf("both nodes got CIDR %s", sa.CIDRs[0])
	}
	for _, c := range []struct {
		from   *testNode
		to     api.Status
		toPort int
	}{{a, sb, 40002}, {b, sa, 40001}} {
		testutil.Eventually(t, 10*time.Second, "the expected state", func() error {
			p, ok := peerFor(c.from.dev, c.to.Tunnel.PublicKey)
			if !ok {
				return fmt.Errorf("%s has peers %+v, none with %s's key", c.from.name, c.from.dev.Peers(), c.to.Node)
			}
			if want := netip.MustParsePrefix(c.to.CIDRs[0]); !slices.Contains(p.AllowedIPs, want) || len(c.from.dev.Peers()) != 1 {
				return fmt.Errorf("%s's peer for %s allows %v, want %v (and no other peer)", c.from.name, c.to.Node, p.AllowedIPs, want)
			}
			if p.Endpoint != fmt.Sprintf("127.0.0.1:%d", c.toPort) || p.Keepalive != c.from.cfg.WireGuard.PersistentKeepalive.D() {
				return fmt.Errorf("%s's peer for %s: endpoint %q keepalive %v", c.from.name, c.to.Node, p.Endpoint, p.Keepalive)
			}
			return nil
		})
	}
	// a's datapath: both mesh IPs have an identity, a's own is a local
	// host endpoint attached on the tunnel device.
	testutil.Eventually(t, 10*time.Second, "the expected state", func() error {
		ipc := a.dp.IPCache()
		for _, ip := range []string{sa.MeshIP, sb.MeshIP} {
			// An allocated identity carries its cluster's id.
			if n := identity.NumericIdentity(ipc[netip.MustParsePrefix(ip+"/32")]); n.ClusterID() == 0 {
				return fmt.Errorf("ipcache %v has no allocated identity for %s", ipc, ip)
			}
		}
		return nil
	})
	if ep, ok := a.dp.Endpoint(netip.MustParseAddr(sa.MeshIP)); !ok || !ep.Host {
		t.Fatalf("a's own mesh IP is not a host endpoint in its datapath: %+v %v", ep, ok)
	}
	if !a.dp.Attached("wt-a1") {
		t.Fatal("the datapath is not attached to a's tunnel device")
	}

	// A policy applied on one node is enforced on the other's endpoint.
	doc := "apiVersion: weft.dev/v1\nkind: Policy\nmetadata: {name: only-a}\nspec:\n  endpointSelector: {matchLabels: {mesh:kind: vm}}\n  ingress:\n    - from: [{matchLabels: {mesh:cluster: default}}]\n      ports: [{port: 22, protocol: TCP}]\n"
	if _, err := a.client.ApplyPolicy(ctx, api.ApplyPolicyRequest{Filename: "p.yaml", Document: doc}); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, 10*time.Second, "the expected state", func() error {
		ep, _ := b.dp.Endpoint(netip.MustParseAddr(sb.MeshIP))
		if !ep.IngressEnforced {
			return errors.New("b's host endpoint is not ingress-enforced after the policy")
		}
		ps, err := b.client.Policies(ctx)
		if err != nil || len(ps) != 1 || len(ps[0].SelectedEndpoints) != 1 {
			return fmt.Errorf("b's policies = %+v, %v", ps, err)
		}
		return nil
	})

	// b leaves: its device and datapath are removed, and a drops it.
	if err := b.client.Leave(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-b.done:
		b.cancel = nil
		if err != nil {
			t.Fatalf("b's agent after leave: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("b's agent did not exit after leave")
	}
	if !b.dev.Destroyed() || !b.dp.Removed() {
		t.Fatalf("after leave: device destroyed %v, datapath removed %v; want both", b.dev.Destroyed(), b.dp.Removed())
	}
	testutil.Eventually(t, 10*time.Second, "the expected state", func() error {
		if ps := a.dev.Peers(); len(ps) != 0 {
			return fmt.Errorf("a still has peers %+v after b left", ps)
		}
		if _, ok := a.dp.IPCache()[netip.MustParsePrefix(sb.MeshIP+"/32")]; ok {
			return errors.New("a's ipcache still maps b's mesh IP")
		}
		return nil
	})
}

func TestAgentRestartKeepsDatapathAndWorkloads(t *testing.T) {
	srv := kvstoretest.StartEmbedded(t)
	n := newTestNode(t, srv, "r1", 3)
	n.veths.add("wl-web")
	n.start(t)
	ctx := context.Background()
	ep, err := n.client.AddEndpoint(ctx, api.EndpointSpec{Netns: "wl-web", Labels: map[string]string{"app": "web"}})
	if err != nil {
		t.Fatal(err)
	}
	key := n.dev.PublicKey()
	if err := n.stop(t); err != nil {
		t.Fatalf("plain stop: %v", err)
	}
	if n.dev.Destroyed() || n.dp.Removed() {
		t.Fatal("a plain stop removed the device or the datapath")
	}
	if !n.dp.Closed() {
		t.Fatal("a plain stop left the datapath open")
	}
	// The workload's host veth is gone from the fake's attachments only if
	// the agent unplumbed it; it must not have.
	if n.veths.unplumbed("wl-web") {
		t.Fatal("a plain stop removed the workload's veth")
	}

	n.start(t)
	if n.dev.PublicKey() != key {
		t.Fatal("the restarted agent changed the device's key")
	}
	eps, err := n.client.Endpoints(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var found bool
	for _, e := range eps {
		if e.Name == "wl-web" && e.Local && e.IP == ep.IP && e.Identity == ep.Identity {
			found = true
		}
	}
	if !found {
		t.Fatalf("after restart endpoints = %+v, want wl-web at %s with identity %d", eps, ep.IP, ep.Identity)
	}
	if got := n.veths.plumbs("wl-web"); got != 2 {
		t.Fatalf("wl-web plumbed %d times, want 2 (added, restored)", got)
	}
}

func TestAgentStartFailureUndoesStartedComponents(t *testing.T) {
	srv := kvstoretest.StartEmbedded(t)
	n := newTestNode(t, srv, "f1", 4)
	a, err := New(n.cfg, Options{
		OpenTunnel:   func(ctx context.Context, c tunnel.Config) (Device, error) { return n.dev.Open(ctx, c) },
		OpenDatapath: func(bpf.Config) (Datapath, error) { return nil, errors.New("verifier said no") },
		veths:        n.veths,
	})
	if err != nil {
		t.Fatal(err)
	}
	err = a.Run(context.Background())
	if err == nil || !strings.Contains(err.Error(), "attach datapath: load datapath: verifier said no") {
		t.Fatalf("Run = %v, want the attach datapath step to fail with the loader's error", err)
	}
	if _, err := n.dev.Status(); err == nil {
		t.Fatal("the device opened before the failure was not closed")
	}
	if n.dev.Destroyed() {
		t.Fatal("a failed start destroyed the device (a restart would cut traffic)")
	}
}
