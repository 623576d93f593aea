package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/urfave/cli/v2"

	"github.com/weftmesh/weft/internal/lab/labcli"
)

// TestMain lets the test binary be weft-lab too: started through a link
// named weft-lab, it runs the real lab, so the tests can drive the lab
// through `meshctl lab` without building binaries.
func TestMain(m *testing.M) {
	if filepath.Base(os.Args[0]) == labBinary {
		os.Exit(labcli.ExitStatus(labcli.Run(context.Background(), os.Args[1:], os.Stdin, os.Stdout, os.Stderr), os.Stderr))
	}
	os.Exit(m.Run())
}

// TestMeshctlHelper is not a test: the tests run the test binary with it as
// the meshctl command, with the process's own streams as the meshctl binary
// has them. It says its pid first, so a test can tell that weft-lab took
// its place.
func TestMeshctlHelper(t *testing.T) {
	if os.Getenv("MESHCTL_TEST_HELPER") != "1" {
		t.Skip("helper process for the meshctl lab tests")
	}
	fmt.Fprintf(os.Stderr, "meshctl pid %d\n", os.Getpid())
	i := slices.Index(os.Args, "--")
	os.Exit(ExitStatus(Run(context.Background(), os.Args[i+1:], os.Stdin, os.Stdout, os.Stderr), os.Stderr))
}

// meshctl is the meshctl command as its own process; path is its PATH.
func meshctl(path string, args ...string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], append([]string{"-test.run=^TestMeshctlHelper$", "--"}, args...)...)
	cmd.Env = append(os.Environ(), "MESHCTL_TEST_HELPER=1", "PATH="+path)
	return cmd
}

// fakeLab writes a weft-lab into a new directory that prints its pid and
// arguments, copies stdin to stdout and exits with status.
func fakeLab(t *testing.T, status int) string {
	t.Helper()
	if runtime.GOOS == "windows" {
		t.Skip("the fake weft-lab is a shell script")
	}
	dir := t.TempDir()
	script := fmt.Sprintf("#!/bin/sh\necho \"weft-lab pid $$\" >&2\necho \"args: $*\"\ncat\nexit %d\n", status)
	if err := os.WriteFile(filepath.Join(dir, labBinary), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// pretendExecutable makes meshctl believe it runs as path.
func pretendExecutable(t *testing.T, path string) {
	t.Helper()
	old := executable
	executable = func() (string, error) { return path, nil }
	t.Cleanup(func() { executable = old })
}

// weft-lab is found next to meshctl first, then in PATH; without one the
// error says what is missing and how to get it.
func TestFindLab(t *testing.T) {
	bin, inPath := fakeLab(t, 0), fakeLab(t, 0)
	pretendExecutable(t, filepath.Join(bin, "meshctl"))
	t.Setenv("PATH", inPath)
	if got, err := findLab("up"); err != nil || got != filepath.Join(bin, labBinary) {
		t.Errorf("with weft-lab next to meshctl: %q, %v", got, err)
	}

	pretendExecutable(t, filepath.Join(t.TempDir(), "meshctl"))
	if got, err := findLab("up"); err != nil || got != filepath.Join(inPath, labBinary) {
		t.Errorf("with weft-lab in PATH: %q, %v", got, err)
	}

	t.Setenv("PATH", t.TempDir())
	_, err := findLab("up")
	want := []string{"weft-lab", "next to meshctl", "nor in PATH", "make build", "bin/"}
	if runtime.GOOS != "linux" {
		want = []string{"meshctl lab up builds network namespaces", "Linux"}
	}
	for _, w := range want {
		if err == nil || !strings.Contains(err.Error(), w) {
			t.Errorf("without weft-lab: %v, want it to say %q", err, w)
		}
	}
}

// Run with streams of its own (a test, a program using package cli) runs
// weft-lab as a child connected to them: every argument, --help included,
// goes to weft-lab, and its exit status comes back.
func TestLabPassesThrough(t *testing.T) {
	dir := fakeLab(t, 7)
	pretendExecutable(t, filepath.Join(dir, "meshctl"))
	for _, args := range [][]string{
		{"up", "--name", "x", "--nat-site"},
		{"--help"},
		{"exec", "n1", "--", "sh", "-c", "exit 3"},
	} {
		var out, errOut strings.Builder
		err := Run(context.Background(), append([]string{"lab"}, args...), strings.NewReader("from stdin\n"), &out, &errOut)
		if want := "args: " + strings.Join(args, " ") + "\nfrom stdin\n"; out.String() != want {
			t.Errorf("meshctl lab %s: stdout %q, want %q", strings.Join(args, " "), out.String(), want)
		}
		var ec cli.ExitCoder
		if !errors.As(err, &ec) || ec.ExitCode() != 7 || ec.Error() != "" {
			t.Errorf("meshctl lab %s: %v, want exit status 7 and no message", strings.Join(args, " "), err)
		}
		if !strings.Contains(errOut.String(), "weft-lab pid") {
			t.Errorf("weft-lab's stderr is lost: %q", errOut.String())
		}
	}

	// Completion is weft-lab's.
	var out strings.Builder
	_ = Run(context.Background(), []string{"lab", "up", "--generate-bash-completion"}, strings.NewReader(""), &out, &out)
	if !strings.Contains(out.String(), "args: up --generate-bash-completion") {
		t.Errorf("completion not passed on: %q", out.String())
	}
}

// The meshctl binary becomes weft-lab (exec): same pid, so signals, a
// terminal's Ctrl-C and even SIGKILL reach the lab as they did when it was
// part of meshctl, and the exit status is weft-lab's.
func TestLabExecsWeftLab(t *testing.T) {
	dir := fakeLab(t, 5)
	cmd := meshctl(dir+string(os.PathListSeparator)+os.Getenv("PATH"), "lab", "status", "-o", "json")
	cmd.Stdin = strings.NewReader("from stdin\n")
	var out, errOut strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 5 {
		t.Errorf("meshctl lab status: %v, want exit status 5\n%s", err, errOut.String())
	}
	if want := "args: status -o json\nfrom stdin\n"; out.String() != want {
		t.Errorf("stdout %q, want %q", out.String(), want)
	}
	var mpid, lpid int
	for _, line := range strings.Split(errOut.String(), "\n") {
		fmt.Sscanf(line, "meshctl pid %d", &mpid)
		fmt.Sscanf(line, "weft-lab pid %d", &lpid)
	}
	if mpid == 0 || mpid != lpid {
		t.Errorf("weft-lab did not replace meshctl (meshctl pid %d, weft-lab pid %d):\n%s", mpid, lpid, errOut.String())
	}
}
