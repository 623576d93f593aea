package main

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// command runs the built binary with args and no CNI_COMMAND, as the init
// container does.
func command(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := exec.Command(weftCNI(t), args...)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		code = ee.ExitCode()
	case err != nil:
		t.Fatal(err)
	}
	return o.String(), e.String(), code
}

func TestHelp(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{nil, []string{"install", "uninstall", "CNI_COMMAND set and no arguments", "0.4.0, 1.0.0, 1.1.0", "agentSocket", "timeout", "logFile", "prevResult"}},
		{[]string{"--help"}, []string{"install", "uninstall"}},
		{[]string{"install", "--help"}, []string{"--bin-dir", "--conf-dir", "--mode", "--chain-into", "--agent-socket", "--log-file", "--timeout", "05-weft.conflist", ".weft-bak", "(default: \"/run/weft/agent.sock\")"}},
		{[]string{"uninstall", "--help"}, []string{"--bin-dir", "--conf-dir", "byte for byte"}},
	} {
		out, errOut, code := command(t, tc.args...)
		if code != 0 {
			t.Errorf("weft-cni %q: exit %d: %s", tc.args, code, errOut)
		}
		for _, w := range tc.want {
			if !strings.Contains(out, w) {
				t.Errorf("weft-cni %q does not say %q:\n%s", tc.args, w, out)
			}
		}
	}
}

func TestInstallCommand(t *testing.T) {
	d := t.TempDir()
	bin, conf := filepath.Join(d, "host/opt/cni/bin"), filepath.Join(d, "host/etc/cni/net.d")
	for _, dir := range []string{bin, conf} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	out, errOut, code := command(t, "install", "--bin-dir", bin, "--conf-dir", conf, "--mode", "primary", "--log-file", "/var/log/weft-cni.log")
	if code != 0 {
		t.Fatalf("install: exit %d: %s", code, errOut)
	}
	if want := "installed " + filepath.Join(bin, "weft-cni") + "\nwrote " + filepath.Join(conf, "05-weft.conflist") + "\n"; out != want {
		t.Errorf("install printed %q, want %q", out, want)
	}
	self, _ := os.ReadFile(weftCNI(t))
	if copied, err := os.ReadFile(filepath.Join(bin, "weft-cni")); err != nil || !bytes.Equal(copied, self) {
		t.Errorf("the installed binary is not weft-cni itself (%v)", err)
	}
	if c, _ := os.ReadFile(filepath.Join(conf, "05-weft.conflist")); !strings.Contains(string(c), `"logFile": "/var/log/weft-cni.log"`) {
		t.Errorf("conflist:\n%s", c)
	}
	// The installed copy installs too (run from the bin dir itself).
	cmd := exec.Command(filepath.Join(bin, "weft-cni"), "install", "--bin-dir", bin, "--conf-dir", conf, "--log-file", "/var/log/weft-cni.log")
	if o, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(o), "nothing to change") {
		t.Errorf("install by the installed copy: %v: %s", err, o)
	}

	_, errOut, code = command(t, "install", "--bin-dir", bin, "--conf-dir", t.TempDir(), "--mode", "chained")
	if code != 1 || !strings.Contains(errOut, "weft-cni: no CNI configuration in") {
		t.Errorf("chained into an empty conf dir: exit %d: %s", code, errOut)
	}

	out, errOut, code = command(t, "uninstall", "--bin-dir", bin, "--conf-dir", conf)
	if code != 0 || !strings.Contains(out, "removed "+filepath.Join(bin, "weft-cni")) || !strings.Contains(out, "removed "+filepath.Join(conf, "05-weft.conflist")) {
		t.Errorf("uninstall: exit %d\n%s%s", code, out, errOut)
	}
	if ents, _ := os.ReadDir(conf); len(ents) != 0 {
		t.Errorf("uninstall left %v", ents)
	}
}

func TestUsageErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"instal"}, `no command "instal": use install or uninstall`},
		{[]string{"install", "--mode"}, "flag needs an argument"},
		{[]string{"install", "--bogus"}, "flag provided but not defined: -bogus (see weft-cni install --help)"},
		{[]string{"install", "primary"}, "install takes no arguments"},
		{[]string{"uninstall", "x"}, "uninstall takes no arguments"},
	} {
		_, errOut, code := command(t, tc.args...)
		if code != 2 || !strings.Contains(errOut, tc.want) {
			t.Errorf("weft-cni %q: exit %d, stderr %q; want exit 2 and %q", tc.args, code, errOut, tc.want)
		}
	}
}
