package bpf

import (
	"fmt"
	"net"
	"os/exec"
	"runtime"
	"strings"
	"testing"

	"github.com/vishvananda/netns"

	"github.com/weftmesh/weft/internal/testutil"
)

// topo is two workload namespaces routed through a node namespace, the
// way an agent's node looks: wa (100.64.1.2) behind veth hA, wb
// (100.64.2.2) behind hB. Everything lives in namespaces the test creates
// and removes.
type topo struct {
	node, a, b string
}

const (
	topoA = "100.64.1.2"
	topoB = "100.64.2.2"
)

func newTopo(t testing.TB) *topo {
	t.Helper()
	testutil.Privileged(t)
	tp := &topo{
		node: testutil.NewNetns(t, "wbpf-node"),
		a:    testutil.NewNetns(t, "wbpf-wa"),
		b:    testutil.NewNetns(t, "wbpf-wb"),
	}
	ip := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	for _, w := range []struct{ ns, host, subnet string }{{tp.a, "hA", "100.64.1"}, {tp.b, "hB", "100.64.2"}} {
		// Both ends are created directly inside their namespaces.
		ip("link", "add", w.host, "netns", tp.node, "type", "veth", "peer", "name", "eth0", "netns", w.ns)
		ip("-n", tp.node, "addr", "add", w.subnet+".1/24", "dev", w.host)
		ip("-n", tp.node, "link", "set", w.host, "up")
		ip("-n", w.ns, "addr", "add", w.subnet+".2/24", "dev", "eth0")
		ip("-n", w.ns, "link", "set", "eth0", "up")
		ip("-n", w.ns, "link", "set", "lo", "up")
		ip("-n", w.ns, "route", "add", "default", "via", w.subnet+".1")
		// No IPv6 chatter: counters must match exactly the traffic sent.
		testutil.InNetns(t, w.ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
	}
	testutil.InNetns(t, tp.node, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	return tp
}

// inNetns runs fn on an OS thread inside the named network namespace.
// Sockets fn creates stay in that namespace afterwards.
func inNetns(t testing.TB, name string, fn func()) {
	t.Helper()
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatalf("current netns: %v", err)
	}
	defer orig.Close()
	h, err := netns.GetFromName(name)
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatalf("netns %s: %v", name, err)
	}
	defer h.Close()
	if err := netns.Set(h); err != nil {
		runtime.UnlockOSThread()
		t.Fatalf("entering netns %s: %v", name, err)
	}
	defer func() {
		if err := netns.Set(orig); err != nil {
			// Leave the thread locked: it dies with this goroutine
			// rather than serve others in the wrong namespace.
			t.Errorf("returning from netns %s: %v", name, err)
			return
		}
		runtime.UnlockOSThread()
	}()
	fn()
}

// ping sends n echo requests from ns to dst and returns how many replies
// came back.
func ping(t testing.TB, ns, dst string, n int, interval string) (sent, received int) {
	t.Helper()
	out, _ := exec.Command("ip", "netns", "exec", ns, "ping", "-n", "-q", "-c", fmt.Sprint(n), "-i", interval, "-W", "1", dst).CombinedOutput()
	for _, line := range strings.Split(string(out), "\n") {
		if strings.Contains(line, "packets transmitted") {
			if _, err := fmt.Sscanf(line, "%d packets transmitted, %d received", &sent, &received); err == nil {
				return sent, received
			}
		}
	}
	t.Fatalf("ping output not understood: %s", out)
	return 0, 0
}

// listen starts a TCP echo server in ns on addr.
func listen(t testing.TB, ns, addr string) net.Listener {
	t.Helper()
	var ln net.Listener
	var err error
	inNetns(t, ns, func() { ln, err = net.Listen("tcp", addr) })
	if err != nil {
		t.Fatal(err)
	}
	testutil.EchoTCP(t, ln)
	return ln
}
