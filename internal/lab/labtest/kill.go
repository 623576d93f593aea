package labtest

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/weftmesh/weft/internal/lab"
)

// KillPoints are the moments KillUpMidway can kill `lab up` at: right
// after it claimed the name (its state file exists), and once its
// namespaces exist.
var KillPoints = []string{"state", "namespaces"}

// Namespaces lists the network namespaces of lab name.
func Namespaces(t testing.TB, name string) []string {
	t.Helper()
	out, err := exec.Command("ip", "netns", "list").CombinedOutput()
	if err != nil {
		t.Fatalf("ip netns list: %v: %s", err, out)
	}
	var found []string
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) > 0 && strings.HasPrefix(f[0], "wl-"+name+"-") {
			found = append(found, f[0])
		}
	}
	return found
}

// statePath is where the lab keeps its state file (internal/lab).
func statePath(name string) string { return "/run/weft-lab/" + name + ".json" }

// KillUpMidway starts up (a `lab up --name name ...` command), SIGKILLs it
// the moment it reaches when (a KillPoint) and waits for it to end. The
// lab is removed when the test ends, whatever the test did.
func KillUpMidway(t *testing.T, name, when string, up *exec.Cmd) {
	t.Helper()
	t.Cleanup(func() {
		if l, err := lab.Load(name); err == nil {
			_ = l.Down()
		}
	})
	if err := up.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- up.Wait() }()
	reached := func() bool {
		if when == "state" {
			_, err := os.Stat(statePath(name))
			return err == nil
		}
		ns, _ := filepath.Glob(lab.NetnsPath("wl-" + name + "-*"))
		return len(ns) > 0
	}
	// Polled every 200µs, not with testutil.Eventually's back-off: the
	// point is to kill it at that very moment.
	deadline := time.Now().Add(time.Minute)
	for !reached() {
		if time.Now().After(deadline) {
			t.Fatalf("lab up never reached %s", when)
		}
		time.Sleep(200 * time.Microsecond)
	}
	_ = up.Process.Signal(syscall.SIGKILL)
	err := <-done
	t.Logf("lab up ended with %v; %d namespaces were there", err, len(Namespaces(t, name)))
}

// CheckRemoved fails t when anything of lab name is left: namespaces or
// its state file.
func CheckRemoved(t testing.TB, name string) {
	t.Helper()
	if left := Namespaces(t, name); len(left) > 0 {
		t.Errorf("namespaces left: %v", left)
	}
	if _, err := os.Stat(statePath(name)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("state file left: %v", err)
	}
}

// CheckListedForRemoval checks that `lab down --all` (without --yes)
// listed the lab name among those it would remove, not among those it
// leaves alone because a process holds them.
func CheckListedForRemoval(t testing.TB, out, name string) {
	t.Helper()
	listed := false
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) > 0 && f[0] == name {
			listed = true
		}
		if strings.HasPrefix(line, "Left alone") && strings.Contains(line, name) {
			t.Errorf("lab down --all leaves %s alone, as if a process held it:\n%s", name, out)
		}
	}
	if !listed {
		t.Errorf("lab down --all does not list %s:\n%s", name, out)
	}
}
