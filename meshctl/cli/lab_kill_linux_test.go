package cli

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
	"github.com/weftmesh/weft/internal/lab/labtest"
	"github.com/weftmesh/weft/internal/testutil"
)

// realLab puts a weft-lab that runs the real lab (this test binary, see
// TestMain) into a new directory and returns a PATH that finds it first.
func realLab(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(self, filepath.Join(dir, labBinary)); err != nil {
		t.Fatal(err)
	}
	return dir + string(os.PathListSeparator) + os.Getenv("PATH")
}

func labNetns(t *testing.T, name string) []string {
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

// `meshctl lab up` killed while it builds leaves a lab that
// `meshctl lab down --all` removes completely, as when the lab was part of
// meshctl: SIGKILL to meshctl must not leave a weft-lab running on, still
// holding the lab (down --all leaves held labs alone) and still building.
// Killed right after it claimed the name (state file), and once its
// namespaces exist.
func TestLabUpKilledThroughMeshctl(t *testing.T) {
	testutil.Privileged(t)
	path := realLab(t)
	for _, when := range []string{"state", "namespaces"} {
		t.Run("after "+when, func(t *testing.T) {
			name := labtest.UniqueName()
			t.Cleanup(func() {
				if l, err := lab.Load(name); err == nil {
					_ = l.Down()
				}
			})
			up := meshctl(path, "lab", "up", "--name", name, "--sites", "3", "--nodes-per-site", "3", "--nat-site", "--workloads-per-node", "2")
			if err := up.Start(); err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- up.Wait() }()
			state := "/run/weft-lab/" + name + ".json"
			reached := func() bool {
				if when == "state" {
					_, err := os.Stat(state)
					return err == nil
				}
				ns, _ := filepath.Glob(lab.NetnsPath("wl-" + name + "-*"))
				return len(ns) > 0
			}
			deadline := time.Now().Add(time.Minute)
			for !reached() {
				if time.Now().After(deadline) {
					t.Fatalf("meshctl lab up never reached %s", when)
				}
				time.Sleep(200 * time.Microsecond)
			}
			_ = up.Process.Signal(syscall.SIGKILL)
			err := <-done
			t.Logf("meshctl lab up ended with %v; %d namespaces were there", err, len(labNetns(t, name)))

			down := meshctl(path, "lab", "down", "--all")
			if out, err := down.CombinedOutput(); err != nil {
				t.Fatalf("meshctl lab down --all: %v\n%s", err, out)
			}
			if left := labNetns(t, name); len(left) > 0 {
				t.Errorf("namespaces left: %v", left)
			}
			if _, err := os.Stat(state); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("state file left: %v", err)
			}
		})
	}
}
