package cli

import (
	"os"
	"path/filepath"
	"testing"

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

// `meshctl lab up` killed while it builds leaves a lab that
// `meshctl lab down --all` lists for removal and `lab down NAME` removes
// completely, as when the lab was part of meshctl: SIGKILL to meshctl must
// not leave a weft-lab running on, still holding the lab (down --all
// leaves held labs alone) and still building.
// Killed right after it claimed the name (state file), and once its
// namespaces exist.
func TestLabUpKilledThroughMeshctl(t *testing.T) {
	testutil.Privileged(t)
	path := realLab(t)
	for _, when := range labtest.KillPoints {
		t.Run("after "+when, func(t *testing.T) {
			name := labtest.UniqueName()
			labtest.KillUpMidway(t, name, when, meshctl(path, "lab", "up", "--name", name, "--sites", "3", "--nodes-per-site", "3", "--nat-site", "--workloads-per-node", "2"))
			// Listed for removal, not left alone as held: no weft-lab
			// lives on. (--yes is not given: it would take other people's
			// labs on this machine.)
			out, _ := meshctl(path, "lab", "down", "--all").Output()
			labtest.CheckListedForRemoval(t, string(out), name)
			if out, err := meshctl(path, "lab", "down", name).CombinedOutput(); err != nil {
				t.Fatalf("meshctl lab down %s: %v\n%s", name, err, out)
			}
			labtest.CheckRemoved(t, name)
		})
	}
}
