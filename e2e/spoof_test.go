package e2e

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/weftmesh/weft/agent/api"
	"github.com/weftmesh/weft/bpf"
	"github.com/weftmesh/weft/internal/lab"
	"github.com/weftmesh/weft/internal/testutil"
)

// spoofSpec: the seed with web on one site, b1 with db on another; the
// attacker is b1's site router, on b1's LAN.
func spoofSpec() *lab.Spec {
	return &lab.Spec{Sites: []lab.SiteSpec{
		{Name: "sa", Nodes: []lab.NodeSpec{{Name: "seed", Workloads: []lab.WorkloadSpec{{Name: "web"}}}}},
		{Name: "sb", Nodes: []lab.NodeSpec{{Name: "b1", Workloads: []lab.WorkloadSpec{{Name: "db"}, {Name: "intruder"}}}}},
	}}
}

// Markers of the forged packets, so captures tell them from the mesh's own
// traffic: source ports outside the kernel's ephemeral range, an echo
// identifier of their own.
const (
	forgedUDPSport = 61001
	forgedTCPSport = 61002
	forgedEchoID   = 0x5eef
	forgedUDPDport = 7777
	forgedPerKind  = 3
)

// TestSpoofedSources replays the attack of issue 12, point 2: from the
// router on b1's LAN, ICMP, UDP and TCP SYN with web's mesh address as
// source, to db (allowed only from web) and to b1's own mesh IP. Nothing
// may reach them or draw a reply, every packet is shown dropped as
// spoofed-source by `meshctl observe`, and web reaches db through the
// tunnel all along. Then a workload on b1 poses as its neighbour db and
// as the node, b1's agent restarts under a ping (none lost, forgeries
// still dropped), and, both nodes running in strict mode (`meshctl up
// --strict`, `meshctl join --strict`), plaintext between their underlay
// addresses is dropped while the join, etcd and WireGuard the mesh needs
// keep working.
func TestSpoofedSources(t *testing.T) {
	m := NewMesh(t, spoofSpec())
	m.UpWith("seed", "--strict")
	m.JoinWith("b1", "", "--strict")
	web := m.AddWorkload("web", "app=web")
	db := m.AddWorkload("db", "app=db")
	intruder := m.AddWorkload("intruder", "app=intruder")
	m.Echo("db", db, 5432)
	applyPolicy(t, m, "seed", writeFile(t, "db.yaml", `apiVersion: weft.dev/v1
kind: Policy
metadata: {name: db}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress:
    - from: [{matchLabels: {app: web}}]
`))
	checkMatrix(t, m, map[string]string{"db": db}, []verdictCase{{"web", "tcp", "db", 5432, true}, {"web", "udp", "db", 5432, true}})
	var st statusJSON
	m.JSON("b1", &st, "status")
	b1Mesh := st.MeshIP
	b1 := m.node("b1")
	router := m.Lab.Router(lab.RouterName("sb"))

	t.Run("forged mesh sources from b1's LAN reach nothing and are shown dropped", func(t *testing.T) {
		m := m.For(t)
		// The router sends the mesh's addresses to b1, as an attacker on
		// the LAN would.
		if out, err := m.Lab.Exec(t.Context(), router.Netns, "ip", "route", "replace", "100.64.0.0/10", "via", b1.Lab.Underlay.String()); err != nil {
			t.Fatalf("routing the mesh to b1 in the router: %v\n%s", err, out)
		}
		mark := fmt.Sprintf("(udp src port %d or tcp src port %d or (icmp and icmp[4:2] == %d))", forgedUDPSport, forgedTCPSport, forgedEchoID)
		// What arrives at b1 from the LAN (the control: the forgeries do
		// get there), what reaches db, and any reply b1 or db sends web.
		arrive := m.capture(t, "arrive", b1.Lab.Netns, b1.Lab.Iface, "src host "+web+" and "+mark)
		reached := m.capture(t, "reached", m.Lab.Workload("db").Netns, "any", "src host "+web+" and "+mark)
		replies := m.capture(t, "replies", b1.Lab.Netns, "any", fmt.Sprintf("dst host %s and (udp dst port %d or tcp dst port %d or (icmp and icmp[4:2] == %d))", web, forgedUDPSport, forgedTCPSport, forgedEchoID))
		// A UDP socket on b1's own mesh IP: a datagram for it would be
		// delivered without the WireGuard device's programs.
		pc, err := m.Lab.ListenPacket(b1.Lab.Netns, "udp", net.JoinHostPort(b1Mesh, strconv.Itoa(forgedUDPDport)))
		if err != nil {
			t.Fatal(err)
		}
		defer pc.Close()

		for _, dst := range []struct {
			ip      string
			tcpPort int
		}{{db, 5432}, {b1Mesh, 5432}} {
			m.forge(t, router.Netns, "udp", web, dst.ip, forgedUDPSport, forgedUDPDport)
			m.forge(t, router.Netns, "tcp", web, dst.ip, forgedTCPSport, dst.tcpPort)
			m.forge(t, router.Netns, "icmp", web, dst.ip, forgedEchoID, 0)
		}
		time.Sleep(time.Second) // replies, if any, are on their way
		if n := arrive.stop(t); n < 6*forgedPerKind {
			t.Fatalf("b1's underlay saw %d forged packets, want %d: the forgery did not get there, so this test proves nothing", n, 6*forgedPerKind)
		}
		if n := reached.stop(t); n != 0 {
			t.Errorf("%d forged packets reached db:\n%s", n, reached.output())
		}
		if n := replies.stop(t); n != 0 {
			t.Errorf("b1 or db answered %d forged packets:\n%s", n, replies.output())
		}
		_ = pc.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		if n, from, err := pc.ReadFrom(make([]byte, 1500)); err == nil {
			t.Errorf("a forged datagram of %d bytes from %v reached b1's mesh IP", n, from)
		}

		// Every kind, to both targets, shown as a spoofed-source drop.
		testutil.Eventually(t, 20*time.Second, "the drops in meshctl observe", func() error {
			flows, err := observeDrops(m, "b1")
			if err != nil {
				return err
			}
			for _, to := range []string{db, b1Mesh} {
				for _, proto := range []string{"udp", "tcp", "icmp"} {
					found := false
					for _, f := range flows {
						if f.Reason == bpf.ReasonSpoofedSource.String() && f.Source.IP == web && f.Destination.IP == to && f.Protocol == proto {
							found = true
						}
						if f.Verdict == "forwarded" && f.Source.IP == web && f.Source.Port == forgedTCPSport {
							return fmt.Errorf("a forged packet was forwarded: %+v", f)
						}
					}
					if !found {
						return fmt.Errorf("no spoofed-source drop of %s from %s to %s among %d drops", proto, web, to, len(flows))
					}
				}
			}
			return nil
		})
		out := m.MustMeshctl("b1", "observe", "--verdict", "dropped", "--from-ip", web)
		if !strings.Contains(out, bpf.ReasonSpoofedSource.String()) {
			t.Errorf("the table form of observe does not name the reason:\n%s", out)
		}
		// The tunnel still carries web to db.
		checkMatrix(t, m, map[string]string{"db": db}, []verdictCase{{"web", "tcp", "db", 5432, true}, {"web", "udp", "db", 5432, true}})
	})

	t.Run("a workload sending with another local workload's address is dropped", func(t *testing.T) {
		m := m.For(t)
		// intruder, on db's node, poses as db towards web (whose policy
		// is open) and towards db's neighbour, itself.
		arrive := m.capture(t, "at-web", m.Lab.Workload("web").Netns, "any", "src host "+db+" and udp src port "+strconv.Itoa(forgedUDPSport))
		in := m.Lab.Workload("intruder").Netns
		m.forge(t, in, "udp", db, web, forgedUDPSport, forgedUDPDport)
		m.forge(t, in, "udp", b1Mesh, web, forgedUDPSport, forgedUDPDport)
		time.Sleep(500 * time.Millisecond)
		if n := arrive.stop(t); n != 0 {
			t.Errorf("%d datagrams forged by intruder with db's address reached web:\n%s", n, arrive.output())
		}
		testutil.Eventually(t, 20*time.Second, "intruder's forgeries in meshctl observe", func() error {
			flows, err := observeDrops(m, "b1")
			if err != nil {
				return err
			}
			seen := map[string]bool{}
			for _, f := range flows {
				if f.Reason == bpf.ReasonSpoofedSource.String() && f.Direction == "egress" && f.Destination.IP == web && f.Source.Port == forgedUDPSport {
					seen[f.Source.IP] = true
				}
			}
			if !seen[db] || !seen[b1Mesh] {
				return fmt.Errorf("spoofed-source egress drops from %v, want %s and %s", seen, db, b1Mesh)
			}
			return nil
		})
		// Its own address still works: the binding is per veth, not a ban.
		m.Echo("web", web, 8080)
		if err := m.Talk("intruder", "tcp", web, 8080, "own address"); err != nil {
			t.Fatalf("intruder with its own address (%s): %v", intruder, err)
		}
	})

	t.Run("b1's agent restarts without a lost ping and still drops forgeries", func(t *testing.T) {
		m := m.For(t)
		ping, err := m.Lab.Start(m.Lab.Workload("web").Netns, "ping-db", "ping", "-i", "0.05", "-W", "1", db)
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Second)
		_ = b1.Proc.Stop()
		p, err := m.startJoin(b1, m.Token, "")
		if err != nil {
			t.Fatal(err)
		}
		b1.Proc = p
		m.waitOutput(p, regexp.MustCompile(`Already joined`), 30*time.Second, "join to restart the agent")
		m.WaitHealthy("b1")
		time.Sleep(time.Second)
		_ = syscall.Kill(ping.Pid, syscall.SIGINT)
		<-ping.Done()
		sent, recv := pingCounts(t, ping.Output())
		t.Logf("web -> db across b1's agent restart: %d sent, %d received", sent, recv)
		if sent < 20 || recv < sent-1 { // the last one may be in flight at SIGINT
			t.Fatalf("the restart lost %d of %d pings", sent-recv, sent)
		}
		reached := m.capture(t, "reached-after-restart", m.Lab.Workload("db").Netns, "any", "src host "+web+" and udp src port "+strconv.Itoa(forgedUDPSport))
		m.forge(t, router.Netns, "udp", web, db, forgedUDPSport, forgedUDPDport)
		m.forge(t, m.Lab.Workload("intruder").Netns, "udp", web, db, forgedUDPSport, forgedUDPDport)
		time.Sleep(500 * time.Millisecond)
		if n := reached.stop(t); n != 0 {
			t.Fatalf("after the restart, %d forged datagrams reached db:\n%s", n, reached.output())
		}
		if n := m.tcxPrograms(t, b1); n != 1 {
			t.Fatalf("after the restart, %d programs on b1's underlay ingress, want the one", n)
		}
	})

	t.Run("strict mode drops plaintext from another mesh node's underlay", func(t *testing.T) {
		m := m.For(t)
		addr := net.JoinHostPort(b1.Lab.Underlay.String(), "7781")
		ln, err := m.Lab.Listen(b1.Lab.Netns, "tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		testutil.EchoTCP(t, ln)
		// The control: the router is no mesh node, strict mode lets it in.
		if err := dialOnce(t, m, router.Netns, addr); err != nil {
			t.Fatalf("from the router (no mesh node): %v", err)
		}
		seed := m.node("seed")
		if err := dialOnce(t, m, seed.Lab.Netns, addr); err == nil {
			t.Fatal("plain TCP from the seed's underlay address reached b1 in strict mode")
		}
		// The seed is strict too (meshctl up --strict): b1 reaches its
		// etcd and join service, nothing else.
		seedAddr := net.JoinHostPort(seed.Lab.Underlay.String(), "7782")
		sl, err := m.Lab.Listen(seed.Lab.Netns, "tcp", seedAddr)
		if err != nil {
			t.Fatal(err)
		}
		testutil.EchoTCP(t, sl)
		if err := dialOnce(t, m, router.Netns, seedAddr); err != nil {
			t.Fatalf("from b1's router (no mesh node) to the seed: %v", err)
		}
		if err := dialOnce(t, m, b1.Lab.Netns, seedAddr); err == nil {
			t.Fatal("plain TCP from b1's underlay address reached the seed in strict mode")
		}
		for _, port := range []string{"2379", "51834"} {
			if err := dialOnce(t, m, b1.Lab.Netns, net.JoinHostPort(seed.Lab.Underlay.String(), port)); err != nil {
				t.Errorf("b1 to the seed's %s in strict mode: %v", port, err)
			}
		}
		testutil.Eventually(t, 20*time.Second, "the unencrypted-underlay drop in meshctl observe", func() error {
			flows, err := observeDrops(m, "b1")
			if err != nil {
				return err
			}
			for _, f := range flows {
				if f.Reason == bpf.ReasonUnencrypted.String() && f.Source.IP == seed.Lab.Underlay.String() && f.Destination.Port == 7781 {
					return nil
				}
			}
			return fmt.Errorf("no unencrypted-underlay drop from %s among %d drops", seed.Lab.Underlay, len(flows))
		})
		// What b1 needs from the seed in plaintext still works: etcd
		// (status reads the mesh) and the tunnel.
		m.MustMeshctl("b1", "status")
		checkMatrix(t, m, map[string]string{"db": db}, []verdictCase{{"web", "tcp", "db", 5432, true}})
	})

	t.Run("leave takes the underlay program away", func(t *testing.T) {
		m := m.For(t)
		if n := m.tcxPrograms(t, b1); n != 1 {
			t.Fatalf("%d programs on b1's underlay ingress before leave, want 1", n)
		}
		m.MustMeshctl("b1", "leave")
		// The agent finishes leaving on its own after answering.
		testutil.Eventually(t, 30*time.Second, "no program on b1's underlay ingress", func() error {
			if n := m.tcxPrograms(t, b1); n != 0 {
				return fmt.Errorf("%d programs left after leave", n)
			}
			return nil
		})
	})
}

// UpWith is Up with meshctl up flags of the test's own (before the agent
// flags).
func (m *Mesh) UpWith(name string, flags ...string) {
	m.t.Helper()
	n := m.newNode(name)
	args := append([]string{"up", "--name", name, "--advertise-address", n.Lab.Underlay.String(), "--token-max-uses", "100"}, flags...)
	args = append(args, m.procFlags(n)...)
	args = append(args, m.agentFlags(n)...)
	p, err := m.Lab.Start(n.Lab.Netns, "agent-"+name, append([]string{filepath.Join(binDir, "meshctl")}, args...)...)
	if err != nil {
		m.t.Fatalf("meshctl up: %v", err)
	}
	n.Proc = p
	m.Seed = name
	m.waitOutput(p, tokenRE, 90*time.Second, "meshctl up to print a join token")
	m.Token = tokenRE.FindString(p.Output())
}

// JoinWith is Join with meshctl join flags of the test's own (before the
// agent flags).
func (m *Mesh) JoinWith(name, labels string, flags ...string) *MeshNode {
	m.t.Helper()
	n := m.newNode(name)
	args := []string{"join", m.Token, "--name", n.Name}
	if labels != "" {
		args = append(args, "--labels", labels)
	}
	args = append(args, flags...)
	args = append(args, m.procFlags(n)...)
	args = append(args, m.agentFlags(n)...)
	p, err := m.Lab.Start(n.Lab.Netns, "agent-"+n.Name, append([]string{filepath.Join(binDir, "meshctl")}, args...)...)
	if err != nil {
		m.t.Fatal(err)
	}
	n.Proc = p
	m.waitOutput(p, regexp.MustCompile(`(?i)agent .*(ready|running)|Joined the mesh`), 60*time.Second, "meshctl join on "+name)
	m.WaitHealthy(name)
	return n
}

func dialOnce(t *testing.T, m *Mesh, ns, addr string) error {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
	defer cancel()
	c, err := m.Lab.Dial(ctx, ns, "tcp", addr)
	if err != nil {
		return err
	}
	c.Close()
	return nil
}

// observeDrops returns a node's recent drops as `meshctl observe` shows them.
func observeDrops(m *Mesh, node string) ([]api.Flow, error) {
	return observeFlows(m, node, "--verdict", "dropped", "--last", "-1")
}

// capturing is a tcpdump in a lab namespace.
type capturing struct {
	p *lab.Process
}

// capture starts tcpdump on iface in ns with filter and waits until it
// listens.
func (m *Mesh) capture(t *testing.T, name, ns, iface, filter string) *capturing {
	t.Helper()
	p, err := m.Lab.Start(ns, "tcpdump-"+name, "tcpdump", "--immediate-mode", "-l", "-nn", "-i", iface, filter)
	if err != nil {
		t.Fatal(err)
	}
	m.waitOutput(p, regexp.MustCompile(`listening on`), 30*time.Second, "tcpdump to attach in "+ns)
	return &capturing{p: p}
}

var packetLine = regexp.MustCompile(`(?m)^\d\d:\d\d:\d\d\.\d+ `)

// stop ends the capture and returns how many packets it printed.
func (c *capturing) stop(t *testing.T) int {
	t.Helper()
	_ = c.p.Stop()
	return len(packetLine.FindAllString(c.p.Output(), -1))
}

func (c *capturing) output() string { return c.p.Output() }

// forge sends forgedPerKind packets of one kind (udp, tcp SYN or icmp echo
// with id sport) from src to dst out of namespace ns, by the test binary
// acting as a raw-socket helper there.
func (m *Mesh) forge(t *testing.T, ns, kind, src, dst string, sport, dport int) {
	t.Helper()
	out, err := m.Lab.Exec(t.Context(), ns, "env", helperEnv+"=forge", selfBinary(t),
		kind, src, dst, strconv.Itoa(sport), strconv.Itoa(dport), strconv.Itoa(forgedPerKind))
	if err != nil {
		t.Fatalf("forging %s %s -> %s: %v\n%s", kind, src, dst, err, out)
	}
}

// forgeHelper is the "forge" helper: args kind src dst sport dport count.
// It writes whole IPv4 packets to a raw socket (IP_HDRINCL), so the source
// address is whatever it says; the kernel routes them by destination.
func forgeHelper(args []string) error {
	if len(args) != 6 {
		return fmt.Errorf("forge: want kind src dst sport dport count, got %q", args)
	}
	src, err1 := netip.ParseAddr(args[1])
	dst, err2 := netip.ParseAddr(args[2])
	sport, err3 := strconv.Atoi(args[3])
	dport, err4 := strconv.Atoi(args[4])
	count, err5 := strconv.Atoi(args[5])
	for _, err := range []error{err1, err2, err3, err4, err5} {
		if err != nil {
			return fmt.Errorf("forge: %w", err)
		}
	}
	if !src.Is4() || !dst.Is4() {
		return fmt.Errorf("forge: IPv4 only")
	}
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_RAW, syscall.IPPROTO_RAW)
	if err != nil {
		return fmt.Errorf("forge: raw socket: %w", err)
	}
	defer syscall.Close(fd)
	sa := &syscall.SockaddrInet4{Addr: dst.As4()}
	for i := range count {
		pkt, err := forgePacket(args[0], src, dst, uint16(sport), uint16(dport), uint16(i+1))
		if err != nil {
			return err
		}
		if err := syscall.Sendto(fd, pkt, 0, sa); err != nil {
			return fmt.Errorf("forge: sending: %w", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil
}

// forgePacket builds one IPv4 packet with correct checksums.
func forgePacket(kind string, src, dst netip.Addr, sport, dport, seq uint16) ([]byte, error) {
	payload := []byte("WEFT-FORGED")
	var l4 []byte
	var proto byte
	switch kind {
	case "udp":
		proto = 17
		l4 = make([]byte, 8+len(payload))
		binary.BigEndian.PutUint16(l4[0:], sport)
		binary.BigEndian.PutUint16(l4[2:], dport)
		binary.BigEndian.PutUint16(l4[4:], uint16(len(l4)))
		copy(l4[8:], payload)
		binary.BigEndian.PutUint16(l4[6:], l4Checksum(src, dst, proto, l4))
	case "tcp":
		proto = 6
		l4 = make([]byte, 20)
		binary.BigEndian.PutUint16(l4[0:], sport)
		binary.BigEndian.PutUint16(l4[2:], dport)
		binary.BigEndian.PutUint32(l4[4:], 0x5eef0000+uint32(seq))
		l4[12] = 5 << 4
		l4[13] = 0x02 // SYN
		binary.BigEndian.PutUint16(l4[14:], 64240)
		binary.BigEndian.PutUint16(l4[16:], l4Checksum(src, dst, proto, l4))
	case "icmp":
		proto = 1
		l4 = make([]byte, 8+len(payload))
		l4[0] = 8 // echo request
		binary.BigEndian.PutUint16(l4[4:], sport)
		binary.BigEndian.PutUint16(l4[6:], seq)
		copy(l4[8:], payload)
		binary.BigEndian.PutUint16(l4[2:], checksum(l4))
	default:
		return nil, fmt.Errorf("forge: unknown kind %q (udp, tcp, icmp)", kind)
	}
	ip := make([]byte, 20, 20+len(l4))
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(20+len(l4)))
	binary.BigEndian.PutUint16(ip[4:], 0x5e00+seq)
	ip[8] = 64
	ip[9] = proto
	s, d := src.As4(), dst.As4()
	copy(ip[12:], s[:])
	copy(ip[16:], d[:])
	binary.BigEndian.PutUint16(ip[10:], checksum(ip))
	return append(ip, l4...), nil
}

func l4Checksum(src, dst netip.Addr, proto byte, l4 []byte) uint16 {
	s, d := src.As4(), dst.As4()
	pseudo := make([]byte, 0, 12+len(l4))
	pseudo = append(pseudo, s[:]...)
	pseudo = append(pseudo, d[:]...)
	pseudo = append(pseudo, 0, proto, byte(len(l4)>>8), byte(len(l4)))
	return checksum(append(pseudo, l4...))
}

func checksum(b []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// selfBinary is the test binary, which acts as a helper under helperEnv.
func selfBinary(t *testing.T) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return self
}

// tcxProgramsHelper is the "tcx-programs" helper: it prints how many
// programs run on the TCX ingress of an interface of its namespace.
func tcxProgramsHelper(iface string) error {
	ifc, err := net.InterfaceByName(iface)
	if err != nil {
		return err
	}
	res, err := link.QueryPrograms(link.QueryOptions{Target: ifc.Index, Attach: ebpf.AttachTCXIngress})
	if err != nil {
		return fmt.Errorf("querying the TCX ingress of %s: %w", iface, err)
	}
	fmt.Println(len(res.Programs))
	return nil
}

// tcxPrograms counts the programs on a node's underlay interface ingress.
func (m *Mesh) tcxPrograms(t *testing.T, n *MeshNode) int {
	t.Helper()
	out, err := m.Lab.Exec(t.Context(), n.Lab.Netns, "env", helperEnv+"=tcx-programs", selfBinary(t), n.Lab.Iface)
	if err != nil {
		t.Fatalf("counting programs on %s: %v\n%s", n.Lab.Iface, err, out)
	}
	c, err := strconv.Atoi(strings.TrimSpace(string(out)))
	if err != nil {
		t.Fatalf("counting programs on %s: %q", n.Lab.Iface, out)
	}
	return c
}
