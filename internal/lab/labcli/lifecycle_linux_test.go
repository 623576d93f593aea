package labcli

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/weftmesh/weft/internal/lab"
	"github.com/weftmesh/weft/internal/lab/labtest"
	"github.com/weftmesh/weft/internal/testutil"
)

// removeLab is a test's cleanup for a lab it may have left.
func removeLab(t *testing.T, name string) {
	t.Cleanup(func() {
		if l, err := lab.Load(name); err == nil {
			_ = l.Down()
		}
	})
}

// syncBuffer is a bytes.Buffer a running process writes while the test
// reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// `lab up --hold` keeps the lab while it runs (held: `lab down --all`
// leaves it alone) and removes it on SIGTERM.
func TestLabUpHold(t *testing.T) {
	testutil.Privileged(t)
	name := labtest.UniqueName()
	removeLab(t, name)
	var out, errOut syncBuffer
	cmd := weftLab("up", "--hold", "--name", name, "--sites", "1", "--nodes-per-site", "1")
	cmd.Stdout, cmd.Stderr = &out, &errOut
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	var waitErr error
	go func() { waitErr = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-done
	})
	testutil.Eventually(t, 2*time.Minute, "lab up --hold to say the lab is up", func() error {
		select {
		case <-done:
			t.Fatalf("lab up --hold exited (%v):\n%s\n%s", waitErr, out.String(), errOut.String())
		default:
		}
		if !strings.Contains(out.String(), "is up while this command runs") {
			return errors.New("not yet")
		}
		return nil
	})
	l, err := lab.Load(name)
	if err != nil {
		t.Fatalf("the held lab is not there: %v", err)
	}
	if st := l.Status(); !st.InUse || st.OwnerPid != cmd.Process.Pid {
		t.Errorf("the held lab is not held by lab up (pid %d): %+v", cmd.Process.Pid, st)
	}
	// Held: --all does not offer to remove it.
	listing, _, _ := run(t, "down", "--all")
	for _, line := range strings.Split(listing, "\n") {
		if f := strings.Fields(line); len(f) > 0 && f[0] == name {
			t.Errorf("lab down --all offers to remove the held lab:\n%s", listing)
		}
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
		if waitErr != nil {
			t.Errorf("lab up --hold after SIGTERM: %v\n%s", waitErr, errOut.String())
		}
	case <-time.After(2 * time.Minute):
		t.Fatal("lab up --hold did not exit after SIGTERM")
	}
	if !strings.Contains(out.String(), "Lab "+name+" removed.") {
		t.Errorf("lab up --hold did not say it removed the lab:\n%s", out.String())
	}
	labtest.CheckRemoved(t, name)
}

// `lab down --recorded FILE` (make clean) removes the labs recorded there
// and leaves alone a lab of a recorded name that another run made after
// the recorded one went. `lab down NAME` removes the paths the lab owns.
func TestLabDownRecorded(t *testing.T) {
	testutil.Privileged(t)
	mine, reused := labtest.UniqueName(), labtest.UniqueName()
	removeLab(t, mine)
	removeLab(t, reused)
	record := filepath.Join(t.TempDir(), "labs-made")
	owned, err := os.MkdirTemp("/tmp", "weft-lab-owned-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(owned) })
	if err := os.WriteFile(filepath.Join(owned, "agent.log"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	up := func(name string, extra ...string) {
		t.Helper()
		args := append([]string{"up", "--name", name, "--sites", "1", "--nodes-per-site", "1"}, extra...)
		if out, errOut, code := run(t, args...); code != 0 {
			t.Fatalf("lab up %s: exit %d\n%s\n%s", name, code, out, errOut)
		}
	}
	up(mine, "--record", record, "--owns", owned)
	up(reused, "--record", record)
	// The recorded lab goes; another run makes one of the same name.
	if out, errOut, code := run(t, "down", reused); code != 0 {
		t.Fatalf("lab down %s: exit %d %s %s", reused, code, out, errOut)
	}
	up(reused)
	other, err := lab.Load(reused)
	if err != nil {
		t.Fatal(err)
	}

	out, errOut, code := run(t, "down", "--recorded", record)
	if code != 0 {
		t.Fatalf("lab down --recorded: exit %d\n%s\n%s", code, out, errOut)
	}
	if !strings.Contains(out, "Lab "+mine+" removed.") || !strings.Contains(out, "Lab "+reused+" is not the one recorded") {
		t.Errorf("lab down --recorded output:\n%s", out)
	}
	labtest.CheckRemoved(t, mine)
	if _, err := os.Stat(owned); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the path the lab owned (%s) is left: %v", owned, err)
	}
	l, err := lab.Load(reused)
	if err != nil {
		t.Fatalf("the lab another run made was removed: %v", err)
	}
	if l.ID() != other.ID() {
		t.Errorf("lab %s was replaced", reused)
	}
	if _, err := os.Stat(record); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the record file is left: %v", err)
	}
}
