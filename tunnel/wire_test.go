package tunnel

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestWireIsEncrypted captures the underlay between the sites while a known
// plaintext crosses the tunnel: the capture must hold only WireGuard UDP
// and never the plaintext.
func TestWireIsEncrypted(t *testing.T) {
	p := twoNodes(t)
	ans, bns, inet := p.ans, p.bns, p.lab.Internet()
	mustPing(t, ans, "100.64.0.2")

	pcap := filepath.Join(t.TempDir(), "underlay.pcap")
	cmd := exec.Command("nsenter", "--net="+nsPath(inet), "tcpdump", "-i", "any", "-n", "-U", "-s", "0", "-w", pcap, "ip")
	stderr, _ := cmd.StderrPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			if strings.Contains(sc.Text(), "listening on") {
				close(ready)
				break
			}
		}
		for sc.Scan() {
		}
	}()
	select {
	case <-ready:
	case <-time.After(10 * time.Second):
		t.Fatal("tcpdump did not start")
	}

	marker := []byte("WEFT-PLAINTEXT-MARKER-0123456789-")
	payload := bytes.Repeat(marker, 2000)
	ln := listen(t, bns, "100.64.0.2:7100")
	got := make(chan int, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- -1
			return
		}
		defer c.Close()
		var buf bytes.Buffer
		_, _ = buf.ReadFrom(c)
		got <- bytes.Count(buf.Bytes(), marker)
	}()
	c, err := dial(ans, "100.64.0.2:7100")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write(payload); err != nil {
		t.Fatal(err)
	}
	c.Close()
	if n := <-got; n != 2000 {
		t.Fatalf("receiver saw %d markers; want 2000", n)
	}
	time.Sleep(300 * time.Millisecond) // let the last packets reach the capture file
	_ = cmd.Process.Signal(syscall.SIGINT)
	_ = cmd.Wait()

	raw, err := os.ReadFile(pcap)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(raw, marker[:16]) {
		t.Fatal("the plaintext appears on the underlay")
	}
	dump, err := exec.Command("tcpdump", "-r", pcap, "-n", "-q").CombinedOutput()
	if err != nil {
		t.Fatalf("reading capture: %v: %s", err, dump)
	}
	var pkts, udpBytes int
	for _, line := range strings.Split(string(dump), "\n") {
		if line == "" || strings.HasPrefix(line, "reading from") || strings.HasPrefix(line, "Warning:") {
			continue
		}
		pkts++
		if i := strings.LastIndex(line, "length "); i >= 0 {
			n, _ := strconv.Atoi(strings.TrimSpace(line[i+len("length "):]))
			udpBytes += n
		}
		if !strings.Contains(line, " UDP, length") || !(strings.Contains(line, ".51833 >") && strings.Contains(line, ".51833:")) {
			t.Errorf("non-WireGuard packet on the underlay: %s", line)
		}
	}
	// Less UDP payload than plaintext sent would mean the capture missed
	// the transfer and proved nothing.
	if udpBytes < len(payload) {
		t.Fatalf("capture holds %d packets with %d bytes of UDP payload; the %d-byte transfer was not seen", pkts, udpBytes, len(payload))
	}
	t.Logf("%d WireGuard packets (%d bytes) captured, none with the plaintext", pkts, udpBytes)
}
