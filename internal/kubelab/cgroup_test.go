package kubelab

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/weftmesh/weft/internal/testutil"
)

// startInCgroups starts a sleep in every hierarchy of s, as a container
// of a crashed node would be.
func startInCgroups(t *testing.T, s *cgroupSet) *exec.Cmd {
	t.Helper()
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	for _, r := range s.roots {
		if err := os.WriteFile(filepath.Join(r, "cgroup.procs"), []byte(strconv.Itoa(cmd.Process.Pid)), 0o644); err != nil {
			t.Fatalf("moving sleep into %s: %v", r, err)
		}
	}
	if !slices.Contains(s.procs(), cmd.Process.Pid) {
		t.Fatalf("sleep %d is not listed in the cgroups", cmd.Process.Pid)
	}
	return cmd
}

// TestCleanupRemovesOrphans: the cgroups of a node whose network namespace
// is gone are emptied and removed; those of a namespace that exists are
// left alone.
func TestCleanupRemovesOrphans(t *testing.T) {
	testutil.Privileged(t)
	orphan, err := createCgroups(cgroupName(fmt.Sprintf("wl-gone%d-n1", os.Getpid())))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = orphan.remove(5 * time.Second) })
	live, err := createCgroups(cgroupName(testutil.NewNetns(t, "kubelab-cleanup")))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = live.remove(5 * time.Second) })
	victim := startInCgroups(t, orphan)
	bystander := startInCgroups(t, live)

	removed, err := Cleanup(nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range orphan.roots {
		if !slices.Contains(removed, r) {
			t.Errorf("Cleanup did not report %s", r)
		}
		if _, err := os.Stat(r); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("orphaned cgroup %s is still there (%v)", r, err)
		}
	}
	if err := victim.Wait(); err == nil {
		t.Error("the process in the orphaned cgroups exited normally: it should have been killed")
	}
	if left := live.existing(); len(left) != len(live.roots) {
		t.Errorf("Cleanup removed cgroups of a namespace that exists: %d of %d left", len(left), len(live.roots))
	}
	if !slices.Contains(live.procs(), bystander.Process.Pid) {
		t.Error("the process in a live node's cgroups is gone")
	}
}
