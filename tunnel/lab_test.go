package tunnel

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/weftmesh/weft/internal/lab"
	"github.com/weftmesh/weft/internal/lab/labtest"
	"github.com/weftmesh/weft/internal/testutil"
)

// The privileged tests run in labs (internal/lab): network namespaces the
// test creates and removes; nothing touches the root namespace.

func nsPath(ns string) string { return lab.NetnsPath(ns) }

// run runs a command inside ns (network namespace only) and fails the test
// when it fails.
func run(t testing.TB, ns string, args ...string) string {
	t.Helper()
	out, err := runErr(ns, args...)
	if err != nil {
		t.Fatalf("in %s: %s: %v: %s", ns, strings.Join(args, " "), err, out)
	}
	return out
}

func runErr(ns string, args ...string) (string, error) {
	full := append([]string{"--net=" + nsPath(ns)}, args...)
	out, err := exec.Command("nsenter", full...).CombinedOutput()
	return string(out), err
}

// natLab is three nodes of a lab (internal/lab): a and b on public sites,
// c on a site behind a masquerading NAT router.
type natLab struct {
	lab        *lab.Lab
	inet       string // the "internet" namespace between the sites
	a, b, c    string
	aIP, bIP   string // underlay addresses of the public nodes
	cWAN       string // the NAT's public address, c's address as seen by a and b
	inetBridge string // interface in inet that sees every packet between sites
}

func newNATLab(t testing.TB) *natLab {
	t.Helper()
	l := labtest.Generate(t, 3, 1, true)
	na, nb, nc := l.Node("site1-n1"), l.Node("site2-n1"), l.Node("site3-n1")
	if na == nil || nb == nil || nc == nil || !nc.NAT {
		t.Fatalf("lab layout changed: nodes %v", l.Nodes())
	}
	var wan string
	for _, r := range l.Routers() {
		if r.NAT {
			wan = r.WANAddr.String()
		}
	}
	return &natLab{
		lab: l, inet: l.Internet(),
		a: na.Netns, b: nb.Netns, c: nc.Netns,
		aIP: na.Underlay.String(), bIP: nb.Underlay.String(), cWAN: wan,
		inetBridge: "br0",
	}
}

// devName gives a device name unique on this machine: UAPI sockets are
// shared by every namespace.
func devName(suffix string) string {
	return fmt.Sprintf("wt%d%s", os.Getpid()%1000000, suffix)
}

func testLogger(t testing.TB) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// openNode opens a Weft tunnel in ns and destroys it at the end of the test.
func openNode(t testing.TB, ns, suffix string, mesh string) *Tunnel {
	t.Helper()
	tun, err := Open(context.Background(), Config{
		Name:      devName(suffix),
		StateDir:  t.TempDir(),
		Addresses: []netip.Prefix{netip.MustParsePrefix(mesh)},
		Helper:    SelfHelper(),
		// The userspace path is the one every machine can run and the
		// one whose helper must survive restarts: test it even where the
		// kernel has WireGuard.
		Mode:   ModeUserspace,
		Netns:  nsPath(ns),
		Logger: testLogger(t).With("node", suffix),
	})
	if err != nil {
		t.Fatalf("opening tunnel in %s: %v", ns, err)
	}
	t.Cleanup(func() {
		if err := tun.Destroy(); err != nil {
			t.Errorf("destroying %s: %v", tun.Name(), err)
		}
	})
	return tun
}

func reconcile(t testing.TB, tun *Tunnel, peers ...Peer) {
	t.Helper()
	if err := tun.Reconcile(context.Background(), peers); err != nil {
		t.Fatalf("reconcile %s: %v", tun.Name(), err)
	}
}

func pfx(ss ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range ss {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}

// ping reports whether dst answers from ns (a handful of tries, so a
// handshake in progress does not count as unreachable).
func ping(ns, dst string) bool {
	_, err := runErr(ns, "ping", "-n", "-q", "-c", "3", "-i", "0.2", "-w", "6", dst)
	return err == nil
}

func mustPing(t testing.TB, ns, dst string) {
	t.Helper()
	if !ping(ns, dst) {
		t.Fatalf("%s cannot ping %s", ns, dst)
	}
}

func mustNotPing(t testing.TB, ns, dst string) {
	t.Helper()
	if _, err := runErr(ns, "ping", "-n", "-q", "-c", "2", "-i", "0.3", "-w", "2", dst); err == nil {
		t.Fatalf("%s can still ping %s", ns, dst)
	}
}

// inNetns runs fn on a thread inside ns; sockets created by fn stay there.
func inNetns(ns string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		h, err := netns.GetFromPath(nsPath(ns))
		if err != nil {
			errc <- err
			return
		}
		defer h.Close()
		if err := netns.Set(h); err != nil {
			errc <- err
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// listen opens a TCP listener in ns.
func listen(t testing.TB, ns, addr string) net.Listener {
	t.Helper()
	var ln net.Listener
	if err := inNetns(ns, func() (err error) {
		ln, err = net.Listen("tcp", addr)
		return err
	}); err != nil {
		t.Fatalf("listening on %s in %s: %v", addr, ns, err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

func dial(ns, addr string) (net.Conn, error) {
	var c net.Conn
	err := inNetns(ns, func() (err error) {
		c, err = net.DialTimeout("tcp", addr, 10*time.Second)
		return err
	})
	return c, err
}

// tcpEcho connects from ns to addr (served by an echo listener in dstNS)
// and checks that a message comes back.
func tcpEcho(t testing.TB, ns, dstNS, addr string) {
	t.Helper()
	ln := listen(t, dstNS, addr)
	testutil.EchoTCP(t, ln)
	c, err := dial(ns, addr)
	if err != nil {
		t.Fatalf("TCP %s -> %s: %v", ns, addr, err)
	}
	defer c.Close()
	msg := []byte("weft tcp check " + ns)
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write(msg); err != nil {
		t.Fatalf("TCP write %s -> %s: %v", ns, addr, err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("TCP echo %s -> %s: %v", ns, addr, err)
	}
	if string(got) != string(msg) {
		t.Fatalf("TCP echo %s -> %s: got %q", ns, addr, got)
	}
	ln.Close()
}

func peerStatus(t testing.TB, tun *Tunnel, key string) PeerStatus {
	t.Helper()
	st, err := tun.Status()
	if err != nil {
		t.Fatalf("status of %s: %v", tun.Name(), err)
	}
	for _, p := range st.Peers {
		if p.PublicKey == key {
			return p
		}
	}
	return PeerStatus{}
}
