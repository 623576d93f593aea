package tftest

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// python is Debian's interpreter: the unpacked cloud-init's compiled
// dependencies (yaml, netifaces) are built for it, not for another python3
// on PATH.
const python = "/usr/bin/python3"

// ValidateCloudConfig writes content to a temp file and runs cloud-init's
// schema check on it (Debian bookworm's cloud-init, unpacked by make
// terraform-tools). When content is invalid it fails the test (t.Errorf,
// so the test goes on) with cloud-init's message; ok reports validity and
// msg is cloud-init's output. Tests that expect invalid input use
// CheckCloudConfig, which does not fail the test. In -short mode it skips
// the test; a missing checker fails it with what to run.
func ValidateCloudConfig(t testing.TB, content []byte) (ok bool, msg string) {
	t.Helper()
	ok, msg = CheckCloudConfig(t, content)
	if !ok {
		t.Errorf("cloud-config is not valid for cloud-init:\n%s\n--- the cloud-config:\n%s", msg, content)
	}
	return ok, msg
}

// CheckCloudConfig is ValidateCloudConfig for tests that expect invalid
// input: it reports validity and cloud-init's message without failing the
// test. It fails the test only when the checker cannot run.
func CheckCloudConfig(t testing.TB, content []byte) (ok bool, msg string) {
	t.Helper()
	if testing.Short() {
		t.Skip("cloud-init schema checks do not run in -short mode (they need make terraform-tools)")
	}
	file := filepath.Join(t.TempDir(), "cloud-config.yaml")
	if err := os.WriteFile(file, content, 0o600); err != nil {
		t.Fatalf("tftest: writing the cloud-config: %v", err)
	}
	ok, msg, err := checkCloudConfig(Home(), file)
	if err != nil {
		t.Fatal(err)
	}
	return ok, msg
}

// checkCloudConfig runs the schema check on file: ok and cloud-init's
// output, or an error when the checker is missing or does not answer
// valid/invalid.
func checkCloudConfig(home, file string) (ok bool, msg string, err error) {
	dir := filepath.Join(home, "cloud-init")
	if _, err := os.Stat(filepath.Join(dir, ".complete")); err != nil {
		return false, "", fmt.Errorf("cloud-init schema checker not found under %s: run make terraform-tools", home)
	}
	if _, err := os.Stat(python); err != nil {
		return false, "", fmt.Errorf("%s not found: the cloud-init schema checker needs Debian's python3: run scripts/install-deps.sh", python)
	}
	cmd := exec.Command(python, "-m", "cloudinit.cmd.main", "schema", "--config-file", file)
	env := []string{}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PYTHON") {
			env = append(env, kv)
		}
	}
	cmd.Env = append(env, "PYTHONPATH="+filepath.Join(dir, "usr/lib/python3/dist-packages"), "PYTHONDONTWRITEBYTECODE=1")
	out, err := cmd.CombinedOutput()
	msg = string(bytes.TrimSpace(out))
	var exit *exec.ExitError
	switch {
	case err == nil:
		return true, msg, nil
	case errors.As(err, &exit) && exit.ExitCode() == 1 && !strings.Contains(msg, "Traceback"):
		return false, msg, nil
	default:
		return false, msg, fmt.Errorf("cloud-init schema check of %s did not run: %v\n%s", file, err, msg)
	}
}
