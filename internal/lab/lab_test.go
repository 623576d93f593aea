package lab_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/weftmesh/weft/internal/lab"
	"github.com/weftmesh/weft/internal/lab/labtest"
	"github.com/weftmesh/weft/internal/testutil"
)

// rootSnapshot is what the lab must never change: the root namespace's
// addresses (with their links), routes of every table, and firewall.
// Address lifetimes count down on their own and are left out.
func rootSnapshot(t *testing.T) map[string]string {
	t.Helper()
	cmds := map[string][]string{
		"ip -j addr":                    {"ip", "-j", "addr"},
		"ip -j route":                   {"ip", "-j", "route"},
		"ip -j -4 route show table all": {"ip", "-j", "-4", "route", "show", "table", "all"},
		"ip -j -6 route show table all": {"ip", "-j", "-6", "route", "show", "table", "all"},
		"nft list ruleset":              {"nft", "list", "ruleset"},
	}
	snap := map[string]string{}
	for name, args := range cmds {
		out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v: %s", name, err, out)
		}
		if strings.HasPrefix(name, "ip -j") {
			out = stripVolatile(t, out)
		}
		snap[name] = string(out)
	}
	return snap
}

func stripVolatile(t *testing.T, data []byte) []byte {
	var v any
	if err := json.Unmarshal(data, &v); err != nil {
		t.Fatalf("parsing ip -j output: %v", err)
	}
	var walk func(any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			for _, k := range []string{"valid_life_time", "preferred_life_time", "expires"} {
				delete(v, k)
			}
			for _, x := range v {
				walk(x)
			}
		case []any:
			for _, x := range v {
				walk(x)
			}
		}
	}
	walk(v)
	out, _ := json.Marshal(v)
	return out
}

// checkRootUnchanged registers, first, a cleanup that runs after every
// other cleanup of the test (lab teardown included) and compares the root
// namespace with its state at the start.
func checkRootUnchanged(t *testing.T) {
	before := rootSnapshot(t)
	t.Cleanup(func() {
		after := rootSnapshot(t)
		for name, b := range before {
			if after[name] != b {
				t.Errorf("the root namespace changed: %s\nbefore: %s\nafter:  %s", name, b, after[name])
			}
		}
	})
}

func ping(t *testing.T, l *lab.Lab, from string, to netip.Addr) {
	t.Helper()
	if out, err := l.Exec(context.Background(), from, "ping", "-c", "1", "-W", "5", to.String()); err != nil {
		t.Errorf("ping %s -> %s failed: %v\n%s", from, to, err, out)
	}
}

// serveOnce accepts one connection and reports the peer's address.
func serveOnce(ln net.Listener) <-chan string {
	peer := make(chan string, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			peer <- "accept: " + err.Error()
			return
		}
		peer <- c.RemoteAddr().String()
		_, _ = c.Write([]byte("hello\n"))
		c.Close()
	}()
	return peer
}

func TestThreeSitesWithNAT(t *testing.T) {
	testutil.Privileged(t)
	checkRootUnchanged(t)
	spec := lab.Generate(labtest.UniqueName(), 3, 2, true)
	spec.AddWorkloads(1)
	l := labtest.New(t, spec)
	ctx := context.Background()
	pub1, pub2, nat1 := l.Node("site1-n1"), l.Node("site2-n1"), l.Node("site3-n1")
	natRouter := l.Router("site3")

	t.Run("nodes", func(t *testing.T) {
		for _, n := range l.Nodes() {
			out, err := l.Exec(ctx, n.Name, "sh", "-c", "cat /proc/sys/net/ipv4/ip_forward; ip -4 -o addr show dev eth0; ip route show default; ip -o link show lo")
			if err != nil {
				t.Fatal(err)
			}
			s := string(out)
			for _, want := range []string{"1\n", n.Underlay.String() + "/24", "default via " + n.Gateway.String() + " dev eth0", "state UNKNOWN"} {
				if !strings.Contains(s, want) {
					t.Errorf("node %s: %q missing in\n%s", n.Name, want, s)
				}
			}
		}
	})

	t.Run("no route to the machine's interfaces", func(t *testing.T) {
		for _, ns := range l.Namespaces() {
			out, err := l.Exec(ctx, ns, "ip", "-o", "link", "show")
			if err != nil {
				t.Fatal(err)
			}
			for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
				f := strings.Fields(line)
				if len(f) < 2 || !linkLineRE.MatchString(f[0]) {
					// Not a link: iproute2 complains on stderr when another
					// test deletes a namespace while ip maps netns ids to names.
					continue
				}
				name := strings.SplitN(strings.TrimSuffix(f[1], ":"), "@", 2)[0]
				if !slices.Contains([]string{"lo", "br0", "wan0", "eth0"}, name) &&
					!strings.HasPrefix(name, "lan") && !strings.HasPrefix(name, "wl") && !strings.HasPrefix(name, "r") {
					t.Errorf("%s has an unexpected link %s", ns, line)
				}
			}
			out, err = l.Exec(ctx, ns, "ip", "-4", "route", "show", "table", "all")
			if err != nil {
				t.Fatal(err)
			}
			for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
				if line == "" || strings.Contains(line, "198.18.") || strings.Contains(line, "198.19.") ||
					strings.Contains(line, "127.0.0.") || strings.Contains(line, " dev lo ") {
					continue
				}
				t.Errorf("%s has a route outside the lab ranges: %s", ns, line)
			}
		}
	})

	t.Run("ping across sites", func(t *testing.T) {
		ping(t, l, pub1.Name, pub2.Underlay)
		ping(t, l, pub2.Name, pub1.Underlay)
		ping(t, l, pub1.Name, l.Node("site1-n2").Underlay) // same LAN, through the bridge
		ping(t, l, nat1.Name, pub1.Underlay)               // out of the NAT
	})

	t.Run("NAT'd node connects out and is seen as its router", func(t *testing.T) {
		ln, err := l.Listen(pub1.Name, "tcp", net.JoinHostPort(pub1.Underlay.String(), "7001"))
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		peer := serveOnce(ln)
		c, err := l.Dial(ctx, nat1.Name, "tcp", net.JoinHostPort(pub1.Underlay.String(), "7001"))
		if err != nil {
			t.Fatalf("NAT'd node cannot connect out: %v", err)
		}
		defer c.Close()
		got := <-peer
		host, _, _ := net.SplitHostPort(got)
		if host != natRouter.WANAddr.String() {
			t.Errorf("listener saw peer %s, want the NAT router's address %s", got, natRouter.WANAddr)
		}
		if line, _ := bufio.NewReader(c).ReadString('\n'); line != "hello\n" {
			t.Errorf("reply through the NAT: %q", line)
		}
		// A public node is seen with its own address: no NAT there.
		peer = serveOnce(ln)
		c2, err := l.Dial(ctx, pub2.Name, "tcp", net.JoinHostPort(pub1.Underlay.String(), "7001"))
		if err != nil {
			t.Fatal(err)
		}
		c2.Close()
		if host, _, _ := net.SplitHostPort(<-peer); host != pub2.Underlay.String() {
			t.Errorf("public peer seen as %s, want %s", host, pub2.Underlay)
		}
	})

	t.Run("UDP replies come back through the NAT", func(t *testing.T) {
		srv, err := l.ListenPacket(pub1.Name, "udp", net.JoinHostPort(pub1.Underlay.String(), "7002"))
		if err != nil {
			t.Fatal(err)
		}
		defer srv.Close()
		go func() {
			buf := make([]byte, 64)
			n, from, err := srv.ReadFrom(buf)
			if err == nil {
				_, _ = srv.WriteTo([]byte("echo "+from.String()+" "+string(buf[:n])), from)
			}
		}()
		c, err := l.Dial(ctx, nat1.Name, "udp", net.JoinHostPort(pub1.Underlay.String(), "7002"))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := c.Write([]byte("hi")); err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		buf := make([]byte, 128)
		n, err := c.Read(buf)
		if err != nil {
			t.Fatalf("no UDP reply through the NAT: %v", err)
		}
		if got := string(buf[:n]); !strings.HasPrefix(got, "echo "+natRouter.WANAddr.String()+":") || !strings.HasSuffix(got, " hi") {
			t.Errorf("reply %q", got)
		}
	})

	t.Run("nobody connects in to a NAT'd node", func(t *testing.T) {
		ln, err := l.Listen(nat1.Name, "tcp", ":7003")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		// The listener works from its own LAN: the failure below is the NAT.
		c, err := l.Dial(ctx, l.Node("site3-n2").Name, "tcp", net.JoinHostPort(nat1.Underlay.String(), "7003"))
		if err != nil {
			t.Fatalf("same-site connection to the NAT'd node failed: %v", err)
		}
		c.Close()
		if conn, err := ln.Accept(); err == nil {
			conn.Close()
		}
		for _, from := range []string{pub1.Name, pub2.Name, l.Router("site1").Name} {
			dctx, cancel := context.WithTimeout(ctx, 3*time.Second)
			c, err := l.Dial(dctx, from, "tcp", net.JoinHostPort(nat1.Underlay.String(), "7003"))
			cancel()
			if err == nil {
				c.Close()
				t.Errorf("%s opened a connection to the NAT'd node %s", from, nat1.Underlay)
			}
		}
		if out, err := l.Exec(ctx, pub1.Name, "ping", "-c", "1", "-W", "2", nat1.Underlay.String()); err == nil {
			t.Errorf("a public node pings the NAT'd node:\n%s", out)
		}
	})

	t.Run("workloads", func(t *testing.T) {
		for _, w := range l.Workloads() {
			out, err := l.Exec(ctx, w.Name, "ip", "-o", "addr", "show", "dev", w.Iface)
			if err != nil {
				t.Fatal(err)
			}
			if strings.Contains(string(out), "inet ") {
				t.Errorf("workload %s got an IPv4 address: %s", w.Name, out)
			}
			out, err = l.Exec(ctx, w.Node, "ip", "-o", "link", "show", "dev", w.HostIface)
			if err != nil || !strings.Contains(string(out), "state UP") {
				t.Errorf("host end %s of workload %s on %s: %v %s", w.HostIface, w.Name, w.Node, err, out)
			}
		}
		// The veth works: give both ends link-local addresses and ping.
		w := l.Workloads()[0]
		if _, err := l.Exec(ctx, w.Node, "ip", "addr", "add", "169.254.10.1/30", "dev", w.HostIface); err != nil {
			t.Fatal(err)
		}
		if _, err := l.Exec(ctx, w.Name, "ip", "addr", "add", "169.254.10.2/30", "dev", w.Iface); err != nil {
			t.Fatal(err)
		}
		ping(t, l, w.Name, netip.MustParseAddr("169.254.10.1"))
	})

	t.Run("processes", func(t *testing.T) {
		p, err := l.Start(pub1.Name, "greeter", "sh", "-c", "echo hello from $(ip -4 -o addr show dev eth0 | awk '{print $4}'); sleep 1000 & wait")
		if err != nil {
			t.Fatal(err)
		}
		want := "hello from " + pub1.Underlay.String() + "/24"
		for !strings.Contains(p.Output(), want) {
			select {
			case <-p.Done():
				t.Fatalf("process exited: %v: %s", p.Err(), p.Output())
			case <-time.After(20 * time.Millisecond):
			}
		}
		st := l.Status()
		if len(st.Processes) != 1 || st.Processes[0].Pid != p.Pid || !st.Processes[0].Running {
			t.Errorf("status processes: %+v", st.Processes)
		}
		if err := p.Stop(); err != nil {
			t.Fatal(err)
		}
		if p.Running() {
			t.Error("still running after Stop")
		}
		if n := len(l.Status().Processes); n != 0 {
			t.Errorf("%d processes recorded after Stop", n)
		}
		// The shell's child (sleep) was in its process group.
		if leftovers := procsIn(t, pub1.Netns); len(leftovers) > 0 {
			t.Errorf("processes left in %s after Stop: %v", pub1.Netns, leftovers)
		}
	})

	t.Run("same name twice", func(t *testing.T) {
		again := lab.Generate(l.Name(), 1, 1, false)
		if _, err := lab.Up(ctx, again, nil); !errors.Is(err, lab.ErrExists) {
			t.Fatalf("second lab with the name %s: got %v, want ErrExists", l.Name(), err)
		}
		ping(t, l, pub1.Name, pub2.Underlay) // the first one is unharmed
	})

	t.Run("invalid spec changes nothing", func(t *testing.T) {
		bad := lab.Generate(labtest.UniqueName(), 2, 1, false)
		bad.Sites[1].Nodes[0].Name = bad.Sites[0].Nodes[0].Name
		_, err := lab.Up(ctx, bad, nil)
		if !errors.Is(err, lab.ErrInvalidSpec) || !strings.Contains(err.Error(), "sites[1].nodes[0].name") {
			t.Fatalf("got %v", err)
		}
		if ns := netnsWithPrefix(t, "wl-"+bad.Name+"-"); len(ns) > 0 {
			t.Errorf("namespaces made for an invalid spec: %v", ns)
		}
		if names, _ := lab.Names(); slices.Contains(names, bad.Name) {
			t.Error("state file made for an invalid spec")
		}
	})
}

func TestTwoLabsAtOnce(t *testing.T) {
	testutil.Privileged(t)
	checkRootUnchanged(t)
	ctx := context.Background()
	// Both come up at the same time, as in parallel tests.
	labs := make([]*lab.Lab, 2)
	errs := make(chan error, 2)
	for i := range labs {
		go func() {
			var err error
			labs[i], err = lab.Up(ctx, lab.Generate(labtest.UniqueName(), 2, 1, true), nil)
			errs <- err
		}()
	}
	for range labs {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	for _, l := range labs {
		if l != nil {
			t.Cleanup(func() {
				if err := l.Down(); err != nil {
					t.Error(err)
				}
			})
		}
	}
	if t.Failed() {
		t.FailNow()
	}
	a, b := labs[0], labs[1]
	for _, ns := range a.Namespaces() {
		if slices.Contains(b.Namespaces(), ns) {
			t.Fatalf("both labs use namespace %s", ns)
		}
	}
	// Same addresses in both, each lab its own world.
	if a.Node("site1-n1").Underlay != b.Node("site1-n1").Underlay {
		t.Fatal("the generated labs should share the addressing plan")
	}
	lnA, err := a.Listen("site1-n1", "tcp", ":7010")
	if err != nil {
		t.Fatal(err)
	}
	defer lnA.Close()
	lnB, err := b.Listen("site1-n1", "tcp", ":7010")
	if err != nil {
		t.Fatalf("the same port on the same address in the second lab: %v", err)
	}
	defer lnB.Close()
	peerA, peerB := serveOnce(lnA), serveOnce(lnB)
	for _, l := range []*lab.Lab{a, b} {
		c, err := l.Dial(ctx, "site2-n1", "tcp", "198.18.1.10:7010")
		if err != nil {
			t.Fatalf("lab %s: %v", l.Name(), err)
		}
		c.Close()
	}
	// Each listener got its own lab's connection, from its own NAT router.
	for i, peer := range []<-chan string{peerA, peerB} {
		select {
		case got := <-peer:
			if host, _, _ := net.SplitHostPort(got); host != "198.19.0.3" {
				t.Errorf("lab %d: peer %s, want 198.19.0.3", i, got)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("lab %d: its listener got no connection", i)
		}
	}
	if err := b.Down(); err != nil {
		t.Fatal(err)
	}
	ping(t, a, "site2-n1", a.Node("site1-n1").Underlay)
}

func netnsWithPrefix(t *testing.T, prefix string) []string {
	t.Helper()
	out, err := exec.Command("ip", "netns", "list").CombinedOutput()
	if err != nil {
		t.Fatalf("ip netns list: %v: %s", err, out)
	}
	var names []string
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) > 0 && strings.HasPrefix(f[0], prefix) {
			names = append(names, f[0])
		}
	}
	return names
}

// nsInode identifies a namespace independently of its name, so a
// namespace that lingers without a name (held by a process) is still found.
func nsInode(t *testing.T, ns string) uint64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(lab.NetnsPath(ns), &st); err != nil {
		t.Fatalf("stat %s: %v", ns, err)
	}
	return st.Ino
}

// procsIn lists the processes (and open descriptors) inside or holding a
// namespace.
func procsIn(t *testing.T, ns string) []string {
	t.Helper()
	return holders(map[uint64]string{nsInode(t, ns): ns})
}

func holders(inodes map[uint64]string) []string {
	var found []string
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		if e.Name()[0] < '0' || e.Name()[0] > '9' {
			continue
		}
		var st syscall.Stat_t
		if syscall.Stat(filepath.Join("/proc", e.Name(), "ns", "net"), &st) == nil {
			if ns, ok := inodes[st.Ino]; ok && e.Name() != fmt.Sprint(os.Getpid()) {
				found = append(found, fmt.Sprintf("pid %s in %s", e.Name(), ns))
			}
		}
		fds, _ := os.ReadDir(filepath.Join("/proc", e.Name(), "fd"))
		for _, fd := range fds {
			target, _ := os.Readlink(filepath.Join("/proc", e.Name(), "fd", fd.Name()))
			for ino, ns := range inodes {
				if target == fmt.Sprintf("net:[%d]", ino) {
					found = append(found, fmt.Sprintf("pid %s holds %s open", e.Name(), ns))
				}
			}
		}
	}
	return found
}

// Teardown removes every namespace, link and process of the lab.
func TestTeardownLeavesNothing(t *testing.T) {
	testutil.Privileged(t)
	checkRootUnchanged(t)
	spec := lab.Generate(labtest.UniqueName(), 3, 1, true)
	spec.AddWorkloads(1)
	prefix := "wl-" + spec.Name + "-"
	if before := netnsWithPrefix(t, prefix); len(before) > 0 {
		t.Fatalf("namespaces before: %v", before)
	}
	l, err := lab.Up(context.Background(), spec, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Down() })
	during := netnsWithPrefix(t, prefix)
	if len(during) != len(l.Namespaces()) {
		t.Fatalf("namespaces while up: %v, want %v", during, l.Namespaces())
	}
	inodes := map[uint64]string{}
	links := 0
	for _, ns := range during {
		inodes[nsInode(t, ns)] = ns
		out, err := exec.Command("ip", "-n", ns, "-o", "link", "show").CombinedOutput()
		if err != nil {
			t.Fatal(err)
		}
		links += strings.Count(strings.TrimSpace(string(out)), "\n") + 1
	}
	if links < len(during)*2 {
		t.Fatalf("only %d links in %d namespaces", links, len(during))
	}
	p1, err := l.Start("site1-n1", "sleeper", "sleep", "1000")
	if err != nil {
		t.Fatal(err)
	}
	// A process the lab did not start, left inside a lab namespace.
	stray := exec.Command("nsenter", "--net="+lab.NetnsPath(l.Node("site2-n1").Netns), "sleep", "1000")
	if err := stray.Start(); err != nil {
		t.Fatal(err)
	}
	strayDone := make(chan error, 1)
	go func() { strayDone <- stray.Wait() }()
	// Down finds such a process by the namespace it is in: wait until
	// nsenter has entered it, or a loaded machine runs Down first and the
	// test fails for a process that was not in the lab yet.
	strayNS := nsInode(t, l.Node("site2-n1").Netns)
	testutil.Eventually(t, 10*time.Second, "the stray process to enter site2-n1's namespace", func() error {
		var st syscall.Stat_t
		if err := syscall.Stat(fmt.Sprintf("/proc/%d/ns/net", stray.Process.Pid), &st); err != nil {
			return err
		}
		if st.Ino != strayNS {
			return fmt.Errorf("pid %d is in netns inode %d, not %d", stray.Process.Pid, st.Ino, strayNS)
		}
		return nil
	})

	if err := l.Down(); err != nil {
		t.Fatal(err)
	}
	if after := netnsWithPrefix(t, prefix); len(after) > 0 {
		t.Errorf("namespaces after Down: %v", after)
	}
	if h := holders(inodes); len(h) > 0 {
		t.Errorf("lab namespaces still held after Down (their links live on): %v", h)
	}
	if p1.Running() {
		t.Errorf("started process %d survived Down", p1.Pid)
	}
	if err := <-strayDone; err == nil {
		t.Error("the stray process exited cleanly instead of being killed")
	}
	if names, _ := lab.Names(); slices.Contains(names, spec.Name) {
		t.Error("state file left after Down")
	}
	if err := l.Down(); err != nil {
		t.Errorf("second Down: %v", err)
	}
}

// TestHelperLabOwner is not a test: TestCrashedCreator runs the test binary
// with it to own a lab and be killed.
func TestHelperLabOwner(t *testing.T) {
	name := os.Getenv("WEFT_LAB_HELPER")
	if name == "" {
		t.Skip("helper process for TestCrashedCreator")
	}
	l, err := lab.Up(context.Background(), lab.Generate(name, 2, 1, true), nil)
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	if _, err := l.Start("site2-n1", "sleeper", "sleep", "1000"); err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	fmt.Println("ready")
	select {}
}

// A lab whose creating process was killed is removed by DownAll, which
// leaves a lab whose owner still runs alone.
func TestCrashedCreator(t *testing.T) {
	testutil.Privileged(t)
	checkRootUnchanged(t)
	mine := labtest.Generate(t, 1, 1, false)

	name := labtest.UniqueName()
	helper := exec.Command(os.Args[0], "-test.run=^TestHelperLabOwner$", "-test.v")
	helper.Env = append(os.Environ(), "WEFT_LAB_HELPER="+name)
	stdout, err := helper.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := helper.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = helper.Process.Kill()
		if l, err := lab.Load(name); err == nil {
			_ = l.Down()
		}
	})
	lines := bufio.NewScanner(stdout)
	ready := false
	var seen []string
	for lines.Scan() {
		seen = append(seen, lines.Text())
		if lines.Text() == "ready" {
			ready = true
			break
		}
	}
	if !ready {
		t.Fatalf("helper did not bring up its lab: %s", strings.Join(seen, "\n"))
	}
	go func() { _, _ = io.Copy(io.Discard, stdout) }()
	if err := helper.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = helper.Wait()

	// The lab outlived its creator, with its process.
	crashed, err := lab.Load(name)
	if err != nil {
		t.Fatal(err)
	}
	st := crashed.Status()
	if st.InUse || len(st.Missing) > 0 || len(st.Processes) != 1 || !st.Processes[0].Running {
		t.Fatalf("crashed lab status: %+v", st)
	}
	ping(t, crashed, "site2-n1", crashed.Node("site1-n1").Underlay)
	sleeper := st.Processes[0].Pid
	inodes := map[uint64]string{}
	for _, ns := range crashed.Namespaces() {
		inodes[nsInode(t, ns)] = ns
	}

	// Limited to this test's labs: a plain DownAll would also remove labs
	// that other tests or people left up with `meshctl lab up`.
	ours := func(n string) bool { return n == name || n == mine.Name() }
	rep, err := lab.DownMatching(nil, ours)
	if err != nil {
		t.Fatalf("DownAll: %v", err)
	}
	if !slices.Contains(rep.Removed, name) {
		t.Errorf("DownAll did not report removing %s: %+v", name, rep)
	}
	if !slices.Contains(rep.Skipped, mine.Name()) {
		t.Errorf("DownAll did not skip %s, whose owner runs: %+v", mine.Name(), rep)
	}
	if left := netnsWithPrefix(t, "wl-"+name+"-"); len(left) > 0 {
		t.Errorf("namespaces left: %v", left)
	}
	if h := holders(inodes); len(h) > 0 {
		t.Errorf("namespaces still held: %v", h)
	}
	if _, err := os.Stat(fmt.Sprintf("/proc/%d", sleeper)); err == nil {
		if data, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", sleeper)); strings.HasPrefix(string(data), "sleep") {
			t.Errorf("the crashed lab's process %d survived", sleeper)
		}
	}
	if _, err := lab.Load(name); !errors.Is(err, lab.ErrNotFound) {
		t.Errorf("state of the crashed lab: %v", err)
	}
	// The lab in use is untouched.
	ping(t, mine, "site1-n1", mine.Router("site1").LANAddr)
}

// The NAT router drops unsolicited inbound traffic even from a peer that
// routes the NAT'd LAN to it; without the drop rule the same connection
// succeeds, which shows the route is right and the rule is what blocks.
func TestNATDropsEvenWithRoute(t *testing.T) {
	testutil.Privileged(t)
	ctx := context.Background()
	l := labtest.Generate(t, 2, 1, true)
	nat := l.Node("site2-n1")
	ln, err := l.Listen(nat.Name, "tcp", ":7020")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if _, err := l.Exec(ctx, "internet", "ip", "route", "add", l.Router("site2").LAN.String(), "via", l.Router("site2").WANAddr.String()); err != nil {
		t.Fatal(err)
	}
	target := net.JoinHostPort(nat.Underlay.String(), "7020")
	dctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	c, err := l.Dial(dctx, "site1-n1", "tcp", target)
	cancel()
	if err == nil {
		c.Close()
		t.Fatal("a connection into the NAT'd LAN got through the NAT router")
	}
	if _, err := l.Exec(ctx, "site2-router", "nft", "delete", "chain", "ip", "weft-lab", "forward"); err != nil {
		t.Fatal(err)
	}
	c, err = l.Dial(ctx, "site1-n1", "tcp", target)
	if err != nil {
		t.Fatalf("without the drop rule the connection should work: %v", err)
	}
	c.Close()
}

// BenchmarkUpDown measures bringing up and removing a 3-site lab with one
// NAT'd site, two nodes per site and one workload per node (16 namespaces).
func BenchmarkUpDown(b *testing.B) {
	testutil.Privileged(b)
	for b.Loop() {
		spec := lab.Generate(labtest.UniqueName(), 3, 2, true)
		spec.AddWorkloads(1)
		l, err := lab.Up(context.Background(), spec, nil)
		if err != nil {
			b.Fatal(err)
		}
		if err := l.Down(); err != nil {
			b.Fatal(err)
		}
	}
}

var linkLineRE = regexp.MustCompile(`^[0-9]+:$`)

// TestLoadRefusesPathNames: a lab name read from a record file or a
// command line is never a path out of the state directory.
func TestLoadRefusesPathNames(t *testing.T) {
	for _, name := range []string{"../../tmp/evil", "a/b", "", "UPPER", strings.Repeat("a", 200)} {
		if _, err := lab.Load(name); !errors.Is(err, lab.ErrNotFound) || !strings.Contains(err.Error(), "not a lab name") {
			t.Errorf("Load(%q) = %v", name, err)
		}
	}
}
