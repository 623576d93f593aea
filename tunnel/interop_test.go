package tunnel

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/weftmesh/weft/internal/lab/labtest"
	"github.com/weftmesh/weft/internal/testutil"
)

// buildWireguardGo builds the stock wireguard-go daemon (the main package
// of golang.zx2c4.com/wireguard, at the version this module pins).
func buildWireguardGo(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "wireguard-go")
	out, err := exec.Command("go", "build", "-o", bin, "golang.zx2c4.com/wireguard").CombinedOutput()
	if err != nil {
		t.Fatalf("building wireguard-go: %v: %s", err, out)
	}
	return bin
}

// TestInteropStockWireguardGo: a Weft tunnel and a stock wireguard-go
// process configured only by wireguard-tools from a wg-quick style file
// exchange traffic both ways.
func TestInteropStockWireguardGo(t *testing.T) {
	l := labtest.Generate(t, 2, 1, false)
	na, nb := l.Node("site1-n1"), l.Node("site2-n1")
	bin := buildWireguardGo(t)

	weft := openNode(t, na.Netns, "a", "100.64.0.1/32")

	stock := devName("s")
	cmd := exec.Command("nsenter", "--net="+nsPath(nb.Netns), bin, "-f", stock)
	cmd.Env = append(os.Environ(), "WG_PROCESS_FOREGROUND=1", "LOG_LEVEL=error")
	logf, _ := os.Create(filepath.Join(t.TempDir(), "wireguard-go.log"))
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = syscall.Kill(cmd.Process.Pid, syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	})
	testutil.Eventually(t, 15*time.Second, "wireguard-go's UAPI socket", func() bool {
		_, err := runErr(nb.Netns, "wg", "show", stock)
		return err == nil
	})

	key, _ := wgtypes.GeneratePrivateKey()
	conf := fmt.Sprintf(`# wg-quick style configuration of a peer no one here wrote
[Interface]
Address = 100.64.0.2/32
MTU = 1420
PrivateKey = %s
ListenPort = 51833

[Peer]
PublicKey = %s
Endpoint = %s:51833
AllowedIPs = 100.64.0.1/32
`, key, weft.PublicKey(), na.Underlay)
	dir := t.TempDir()
	full := filepath.Join(dir, stock+".conf")
	if err := os.WriteFile(full, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	// `wg-quick strip` drops the wg-quick-only keys (Address, MTU) that `wg setconf` refuses.
	stripped, err := exec.Command("wg-quick", "strip", full).Output()
	if err != nil {
		t.Fatalf("wg-quick strip: %v", err)
	}
	wgConf := filepath.Join(dir, "setconf.conf")
	if err := os.WriteFile(wgConf, stripped, 0o600); err != nil {
		t.Fatal(err)
	}
	run(t, nb.Netns, "wg", "setconf", stock, wgConf)
	run(t, nb.Netns, "ip", "address", "add", "100.64.0.2/32", "dev", stock)
	run(t, nb.Netns, "ip", "link", "set", stock, "mtu", "1420", "up")
	run(t, nb.Netns, "ip", "route", "add", "100.64.0.1/32", "dev", stock)

	reconcile(t, weft, Peer{PublicKey: key.PublicKey().String(), Endpoint: nb.Underlay.String() + ":51833", AllowedIPs: pfx("100.64.0.2/32")})

	mustPing(t, na.Netns, "100.64.0.2")
	mustPing(t, nb.Netns, "100.64.0.1")
	tcpEcho(t, na.Netns, nb.Netns, "100.64.0.2:7200")
	tcpEcho(t, nb.Netns, na.Netns, "100.64.0.1:7201")
	if out := run(t, nb.Netns, "wg", "show", stock, "latest-handshakes"); !strings.Contains(out, weft.PublicKey().String()) || strings.Contains(out, "\t0\n") {
		t.Errorf("stock wireguard-go reports no handshake with Weft: %q", out)
	}
}
