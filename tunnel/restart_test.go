package tunnel

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/weftmesh/weft/internal/lab/labtest"
)

// envTestAgent makes the test binary a stand-in agent: it opens the tunnel
// described in the variable (JSON agentSpec), reconciles once, reports on
// stdout and waits to be killed.
const envTestAgent = "WEFT_TUNNEL_TEST_AGENT"

type agentSpec struct {
	Name, StateDir, Netns string
	Address               netip.Prefix
	Peers                 []Peer
}

type agentReport struct {
	HelperPID int    `json:"helperPid"`
	Writes    int    `json:"writes"`
	Error     string `json:"error,omitempty"`
}

func runTestAgent() int {
	var spec agentSpec
	report := func(r agentReport) {
		b, _ := json.Marshal(r)
		fmt.Println(string(b))
	}
	if err := json.Unmarshal([]byte(os.Getenv(envTestAgent)), &spec); err != nil {
		report(agentReport{Error: err.Error()})
		return 1
	}
	tun, err := Open(context.Background(), Config{
		Name: spec.Name, StateDir: spec.StateDir, Netns: spec.Netns,
		Addresses: []netip.Prefix{spec.Address}, Helper: SelfHelper(), Mode: ModeUserspace,
	})
	if err != nil {
		report(agentReport{Error: err.Error()})
		return 1
	}
	w, r := countWrites(tun)
	if err := tun.Reconcile(context.Background(), spec.Peers); err != nil {
		report(agentReport{Error: err.Error()})
		return 1
	}
	report(agentReport{HelperPID: tun.HelperPID(), Writes: w.writes + r.writes})
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	<-ctx.Done()
	return 0
}

// startAgent runs a stand-in agent process and returns it with its report.
func startAgent(t *testing.T, spec agentSpec) (*exec.Cmd, agentReport) {
	t.Helper()
	b, _ := json.Marshal(spec)
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), envTestAgent+"="+string(b))
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("agent said nothing: %v", err)
	}
	var r agentReport
	if err := json.Unmarshal([]byte(line), &r); err != nil || r.Error != "" {
		t.Fatalf("agent: %q %v", line, err)
	}
	return cmd, r
}

// TestRestartKeepsTraffic: the process owning the tunnel is killed and
// started again while a TCP transfer runs through the tunnel. The
// userspace device lives in its own helper process, so the transfer goes
// on; the new agent re-attaches to the same helper and, its input being
// unchanged, writes nothing.
func TestRestartKeepsTraffic(t *testing.T) {
	l := labtest.Generate(t, 2, 1, false)
	na, nb := l.Node("site1-n1"), l.Node("site2-n1")
	b := openNode(t, nb.Netns, "b", "100.64.0.2/32")
	spec := agentSpec{Name: devName("a"), StateDir: t.TempDir(), Netns: nsPath(na.Netns), Address: netip.MustParsePrefix("100.64.0.1/32")}
	t.Cleanup(func() {
		if pid, err := uapiPeerPID(spec.Name); err == nil {
			if err := (&helperProc{pid: pid}).stop(5 * time.Second); err != nil {
				t.Errorf("stopping helper: %v", err)
			}
		}
	})
	spec.Peers = []Peer{{PublicKey: b.PublicKey().String(), Endpoint: nb.Underlay.String() + ":51833", AllowedIPs: pfx("100.64.0.2/32")}}
	agent1, r1 := startAgent(t, spec)
	if r1.Writes == 0 {
		t.Fatalf("first agent configured nothing")
	}
	aKey, err := readKey(spec.StateDir + "/" + keyFile)
	if err != nil {
		t.Fatal(err)
	}
	reconcile(t, b, Peer{PublicKey: aKey.PublicKey().String(), Endpoint: na.Underlay.String() + ":51833", AllowedIPs: pfx("100.64.0.1/32")})
	mustPing(t, na.Netns, "100.64.0.2")

	// A continuous transfer a -> b through the tunnel.
	ln := listen(t, nb.Netns, "100.64.0.2:7300")
	var mu sync.Mutex
	var received int64
	var lastRead time.Time
	var maxGap time.Duration
	readDone := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			readDone <- err
			return
		}
		defer c.Close()
		buf := make([]byte, 64<<10)
		for {
			n, err := c.Read(buf)
			now := time.Now()
			mu.Lock()
			received += int64(n)
			if !lastRead.IsZero() && now.Sub(lastRead) > maxGap {
				maxGap = now.Sub(lastRead)
			}
			lastRead = now
			mu.Unlock()
			if err == io.EOF {
				readDone <- nil
				return
			}
			if err != nil {
				readDone <- err
				return
			}
		}
	}()
	conn, err := dial(na.Netns, "100.64.0.2:7300")
	if err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	writeDone := make(chan error, 1)
	go func() {
		chunk := make([]byte, 32<<10)
		for {
			select {
			case <-stop:
				writeDone <- conn.Close()
				return
			default:
			}
			_ = conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
			if _, err := conn.Write(chunk); err != nil {
				writeDone <- err
				return
			}
			time.Sleep(time.Millisecond) // steady, not saturating: gaps show
		}
	}()
	time.Sleep(500 * time.Millisecond)

	if err := agent1.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = agent1.Wait()
	mu.Lock()
	atKill := received
	mu.Unlock()
	_, r2 := startAgent(t, spec)
	if r2.HelperPID != r1.HelperPID {
		t.Errorf("restarted agent uses helper %d; want the running one, %d", r2.HelperPID, r1.HelperPID)
	}
	if r2.Writes != 0 {
		t.Errorf("restarted agent wrote %d changes for an unchanged mesh; want 0", r2.Writes)
	}
	time.Sleep(500 * time.Millisecond)
	close(stop)
	if err := <-writeDone; err != nil {
		t.Fatalf("transfer broke across the restart: %v", err)
	}
	if err := <-readDone; err != nil {
		t.Fatalf("receiver: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if received <= atKill {
		t.Fatalf("no data arrived after the agent was killed (%d bytes before, %d total)", atKill, received)
	}
	t.Logf("transfer survived the restart: %d bytes, %d after the kill, longest pause between reads %v", received, received-atKill, maxGap)
}
