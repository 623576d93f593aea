// Package testutil holds the test tiers shared by every package: unit tests
// run anywhere, privileged tests need root and network namespaces, and
// end-to-end tests drive the lab with the real binaries. CI is root, so it
// runs every tier; a developer without root still gets the unit tier.
//
// It also holds the helpers the tests of every package share, so that
// none keeps a copy: Eventually (wait for a condition), EchoTCP and
// EchoUDP (echo servers on a listener the test opened) and ScrapeMetrics
// and MetricValue (read a /metrics page as Prometheus does).
package testutil

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"testing"
)

var (
	privOnce   sync.Once
	privReason string
)

// Privileged skips t unless the process is root on Linux, and fails it when
// root cannot create a network namespace (a broken machine, not a reason
// to skip). The skip message says what is missing so a developer
// knows how to run the tier (`sudo make test`).
func Privileged(t testing.TB) {
	t.Helper()
	privOnce.Do(func() { privReason = privilegedMissing() })
	if privReason != "" && os.Geteuid() == 0 && runtime.GOOS == "linux" {
		// Root is how CI runs every tier: a machine that cannot make a
		// namespace there is broken, and skipping would pass CI with the
		// privileged tier never run.
		t.Fatalf("privileged test cannot run as root: %s", privReason)
	}
	if privReason != "" {
		t.Skipf("privileged test skipped: %s (run as root: sudo make test)", privReason)
	}
}

func privilegedMissing() string {
	if runtime.GOOS != "linux" {
		return "needs Linux, running on " + runtime.GOOS
	}
	if os.Geteuid() != 0 {
		return "needs root"
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return "needs the ip command (iproute2)"
	}
	name := fmt.Sprintf("weft-probe-%d", os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		return "cannot create a network namespace: " + strings.TrimSpace(string(out))
	}
	_ = exec.Command("ip", "netns", "del", name).Run()
	return ""
}

// Slow skips t under -short: slow tests (whole labs, benchmarks-as-tests)
// are left out of the quick developer loop but always run in CI.
func Slow(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("slow test skipped in -short mode")
	}
}

// E2E marks an end-to-end test: privileged and slow. It also needs the
// binaries, which the e2e package builds itself.
func E2E(t testing.TB) {
	t.Helper()
	Slow(t)
	Privileged(t)
}

// NewNetns creates a network namespace named prefix-<random> and removes it
// when the test ends, also on failure. It returns the namespace name, usable
// with `ip netns exec`.
func NewNetns(t testing.TB, prefix string) string {
	t.Helper()
	Privileged(t)
	name := fmt.Sprintf("%s-%d-%d", prefix, os.Getpid(), nsCounter.next())
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("creating netns %s: %v: %s", name, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("removing netns %s: %v: %s", name, err, out)
		}
	})
	return name
}

// InNetns runs a command inside the named namespace and fails the test with
// its output when it fails.
func InNetns(t testing.TB, ns string, args ...string) string {
	t.Helper()
	out, err := exec.Command("ip", append([]string{"netns", "exec", ns}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("in netns %s: %s: %v: %s", ns, strings.Join(args, " "), err, out)
	}
	return string(out)
}

type counter struct {
	mu sync.Mutex
	n  int
}

func (c *counter) next() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.n++
	return c.n
}

var nsCounter counter
