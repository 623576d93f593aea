package tunnel

import (
	"context"
	"io"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"testing"
	"time"

	"github.com/weftmesh/weft/internal/testutil"
)

// TestRotationTwoDevices follows the rotation of docs/tunnel.md between
// two devices while traffic flows both ways: a announces its next key, b
// installs it beside the current one, a switches, b moves a's prefixes to
// the new key on its first handshake, a's record drops the old key and b
// removes the old entry. The TCP connection survives; ping loss is
// measured and reported.
func TestRotationTwoDevices(t *testing.T) {
	p := twoNodes(t)
	a, b := p.a, p.b
	mustPing(t, p.ans, "100.64.0.2")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = b.Run(ctx, time.Second) }()

	oldKey := a.PublicKey().String()
	next, err := a.PrepareRotation()
	if err != nil {
		t.Fatal(err)
	}
	withNext := p.aPeer
	withNext.NextPublicKey = next.String()
	reconcile(t, b, withNext)
	if st := peerStatus(t, b, next.String()); st.PublicKey == "" || len(st.AllowedIPs) != 0 {
		t.Fatalf("b's entry for a's next key: %+v; want present without prefixes", st)
	}

	// Traffic both ways: a TCP stream a -> b, pings b -> a.
	ln := listen(t, p.bns, "100.64.0.2:7400")
	got := make(chan int64, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- -1
			return
		}
		n, _ := io.Copy(io.Discard, c)
		got <- n
	}()
	conn, err := dial(p.ans, "100.64.0.2:7400")
	if err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	wrote := make(chan error, 1)
	go func() {
		chunk := make([]byte, 16<<10)
		for {
			select {
			case <-stop:
				wrote <- conn.Close()
				return
			default:
			}
			_ = conn.SetWriteDeadline(time.Now().Add(20 * time.Second))
			if _, err := conn.Write(chunk); err != nil {
				wrote <- err
				return
			}
			time.Sleep(2 * time.Millisecond)
		}
	}()
	pingOut := make(chan string, 1)
	go func() {
		out, _ := exec.Command("nsenter", "--net="+nsPath(p.bns), "ping", "-n", "-q", "-i", "0.01", "-c", "300", "100.64.0.1").CombinedOutput()
		pingOut <- string(out)
	}()
	time.Sleep(500 * time.Millisecond)

	newKey, err := a.Rotate()
	if err != nil {
		t.Fatal(err)
	}
	if newKey != next {
		t.Fatalf("Rotate switched to %s; want the announced %s", newKey, next)
	}
	if k, err := readKey(filepath.Join(a.cfg.StateDir, keyFile)); err != nil || k.PublicKey() != next {
		t.Fatalf("key file after rotation: %v %v", k.PublicKey(), err)
	}
	testutil.Eventually(t, 30*time.Second, "b to move a's prefixes to the new key", func() bool {
		st := peerStatus(t, b, next.String())
		return !st.LastHandshake.IsZero() && slices.Equal(st.AllowedIPs, p.aPeer.AllowedIPs)
	})
	// a's node record now carries only the new key.
	rotated := p.aPeer
	rotated.PublicKey = next.String()
	reconcile(t, b, rotated)
	if st := peerStatus(t, b, oldKey); st.PublicKey != "" {
		t.Fatalf("b still has a's old key: %+v", st)
	}
	out := <-pingOut
	time.Sleep(300 * time.Millisecond)
	close(stop)
	if err := <-wrote; err != nil {
		t.Fatalf("TCP stream broke during rotation: %v", err)
	}
	if n := <-got; n <= 0 {
		t.Fatalf("receiver got %d bytes", n)
	}
	mustPing(t, p.ans, "100.64.0.2")
	mustPing(t, p.bns, "100.64.0.1")
	loss := regexp.MustCompile(`\d+ packets transmitted, \d+ received.*loss`).FindString(out)
	t.Logf("ping b -> a every 10ms across the rotation: %s", loss)
}
