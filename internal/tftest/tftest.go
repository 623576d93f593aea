// Package tftest runs the Terraform CLI against the repository's modules in
// tests: a copy of the module tree per test, init/validate/fmt/plan/apply
// with variables in a JSON file, the plan parsed from `show -json`, and a
// destroy at the test's end for anything a test applied and did not destroy.
//
// The CLI, the providers and the cloud-init schema checker are built from
// source by terraform/tools/install.sh (make terraform-tools) into Home();
// the registry is never contacted. Tests skip in -short mode, so the unit
// tier stays quick, and fail with what to run when the tools are missing.
package tftest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// TerraformVersion is the CLI version install.sh builds (versions.env); a
// terraform of another version under Home() is treated as missing.
const TerraformVersion = "1.5.7"

// commandTimeout bounds one terraform command, so a hung provider fails
// the test with its output instead of waiting for go test's deadline.
const commandTimeout = 15 * time.Minute

// Home is $WEFT_TERRAFORM_HOME or $HOME/.cache/weft-terraform: where
// install.sh puts bin/terraform, the provider mirror, the CLI config
// (terraformrc) and the unpacked cloud-init.
func Home() string {
	if h := os.Getenv("WEFT_TERRAFORM_HOME"); h != "" {
		return h
	}
	home, err := os.UserHomeDir()
	if err != nil {
		// Without a home directory the tools cannot be there either;
		// Require names this path in its message.
		home = "$HOME"
	}
	return filepath.Join(home, ".cache", "weft-terraform")
}

// Require returns the terraform binary path. In -short mode it skips the
// test; if the tools are missing (or the binary is another version) it fails
// with an actionable message ("terraform v1.5.7 not found under HOME: run
// make terraform-tools").
func Require(t testing.TB) string {
	t.Helper()
	if testing.Short() {
		t.Skip("terraform tests do not run in -short mode (they need make terraform-tools)")
	}
	tf, err := findTerraform(Home())
	if err != nil {
		t.Fatal(err)
	}
	return tf
}

var found sync.Map // home -> terraform path, once checked

// findTerraform checks that home holds terraform TerraformVersion and the
// CLI config install.sh writes, and returns the binary's path.
func findTerraform(home string) (string, error) {
	if p, ok := found.Load(home); ok {
		return p.(string), nil
	}
	tf := filepath.Join(home, "bin", "terraform")
	if _, err := os.Stat(tf); err != nil {
		return "", missingTools(home, "no "+tf)
	}
	if _, err := os.Stat(filepath.Join(home, "terraformrc")); err != nil {
		return "", missingTools(home, "no CLI config "+filepath.Join(home, "terraformrc"))
	}
	cmd := exec.Command(tf, "version")
	cmd.Env = append(os.Environ(), "CHECKPOINT_DISABLE=1", "TF_CLI_CONFIG_FILE="+filepath.Join(home, "terraformrc"))
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", missingTools(home, fmt.Sprintf("%s version: %v: %s", tf, err, bytes.TrimSpace(out)))
	}
	first, _, _ := strings.Cut(string(out), "\n")
	if strings.TrimSpace(first) != "Terraform v"+TerraformVersion {
		return "", missingTools(home, fmt.Sprintf("%s reports %q", tf, strings.TrimSpace(first)))
	}
	found.Store(home, tf)
	return tf, nil
}

// missingTools is the error Require fails with: what is missing and what to run.
func missingTools(home, detail string) error {
	return fmt.Errorf("terraform v%s not found under %s (%s): run make terraform-tools", TerraformVersion, home, detail)
}

// Workdir is one test's copy of a module tree, and the terraform commands
// run in it.
type Workdir struct {
	// Dir is the module's directory in the copy; terraform runs here and
	// keeps .terraform, the lock file and the state here.
	Dir string

	t       testing.TB
	tf      string
	env     []string
	scratch string // var files and plans, outside the module tree
	n       int    // numbers the scratch files

	lastVars  string // the var file of the last Apply, for the cleanup destroy
	applied   bool   // Apply ran (even if it failed: it may have created something)
	destroyed bool   // a Destroy succeeded after the last Apply
}

// New copies the directory tree root (e.g. the repo's terraform/ folder,
// found relative to the test) into t.TempDir(), skipping .terraform
// directories, *.tfstate* files and .terraform.lock.hcl, and returns a
// Workdir for the module at root/rel inside the copy, so relative module
// sources (../x) keep working. It calls Require first (skips in -short).
//
// Every command runs with TF_CLI_CONFIG_FILE=<Home>/terraformrc,
// CHECKPOINT_DISABLE=1, TF_IN_AUTOMATION=1 and TF_INPUT=0; TF_DATA_DIR,
// TF_WORKSPACE and TF_CLI_ARGS* from the caller's environment are dropped
// (the copy holds .terraform). The test's cleanup runs nothing destructive
// except this: if Apply ran and no Destroy succeeded after it, it runs
// destroy with the last Apply's variables, so tests never leak resources.
func New(t testing.TB, root, rel string) *Workdir {
	t.Helper()
	tf := Require(t)
	src, err := filepath.Abs(root)
	if err != nil {
		t.Fatalf("tftest.New: root %q: %v", root, err)
	}
	if fi, err := os.Stat(src); err != nil || !fi.IsDir() {
		t.Fatalf("tftest.New: root %q is not a directory (it is resolved from the test's package directory)", root)
	}
	clean := filepath.Clean(rel)
	if filepath.IsAbs(clean) || clean == ".." || strings.HasPrefix(clean, ".."+string(filepath.Separator)) {
		t.Fatalf("tftest.New: module %q must be a relative path inside %s", rel, root)
	}
	if fi, err := os.Stat(filepath.Join(src, clean)); err != nil || !fi.IsDir() {
		t.Fatalf("tftest.New: no module directory %s in %s", rel, root)
	}

	base := t.TempDir()
	copyRoot := filepath.Join(base, filepath.Base(src))
	if err := copyTree(src, copyRoot); err != nil {
		t.Fatalf("tftest.New: copying %s: %v", root, err)
	}
	w := &Workdir{
		Dir:     filepath.Join(copyRoot, clean),
		t:       t,
		tf:      tf,
		env:     commandEnv(os.Environ(), Home()),
		scratch: t.TempDir(),
	}
	// Registered after the TempDirs, so it runs before they are removed.
	t.Cleanup(func() {
		if !w.applied || w.destroyed {
			return
		}
		args := []string{"destroy", "-auto-approve", "-input=false", "-no-color"}
		if w.lastVars != "" {
			args = append(args, "-var-file="+w.lastVars)
		}
		if code, out := w.RunErr(args...); code != 0 {
			t.Errorf("cleanup: terraform %s in %s: exit %d: resources of this test may be left behind\n%s",
				strings.Join(args, " "), w.Dir, code, out)
		}
	})
	return w
}

// commandEnv is environ with the terraform settings every run uses.
func commandEnv(environ []string, home string) []string {
	env := make([]string, 0, len(environ)+4)
	for _, kv := range environ {
		k, _, _ := strings.Cut(kv, "=")
		switch {
		case k == "TF_CLI_CONFIG_FILE", k == "CHECKPOINT_DISABLE", k == "TF_IN_AUTOMATION",
			k == "TF_INPUT", k == "TF_DATA_DIR", k == "TF_WORKSPACE", strings.HasPrefix(k, "TF_CLI_ARGS"):
			continue
		}
		env = append(env, kv)
	}
	return append(env,
		"TF_CLI_CONFIG_FILE="+filepath.Join(home, "terraformrc"),
		"CHECKPOINT_DISABLE=1",
		"TF_IN_AUTOMATION=1",
		"TF_INPUT=0",
	)
}

// skipInCopy reports whether copyTree leaves out a file or directory: local
// state and init results that would make a test depend on someone's
// earlier run.
func skipInCopy(name string, dir bool) bool {
	if dir {
		return name == ".terraform"
	}
	return name == ".terraform.lock.hcl" || strings.Contains(name, ".tfstate")
}

// copyTree copies directory src to dst (which must not exist), keeping file
// modes and symlinks.
func copyTree(src, dst string) error {
	return filepath.WalkDir(src, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, path)
		if err != nil {
			return err
		}
		if rel != "." && skipInCopy(d.Name(), d.IsDir()) {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		target := filepath.Join(dst, rel)
		info, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case d.IsDir():
			return os.MkdirAll(target, info.Mode().Perm()|0o700)
		case d.Type()&os.ModeSymlink != 0:
			link, err := os.Readlink(path)
			if err != nil {
				return err
			}
			return os.Symlink(link, target)
		case d.Type().IsRegular():
			data, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			return os.WriteFile(target, data, info.Mode().Perm())
		default:
			return fmt.Errorf("%s: not a regular file, directory or symlink", path)
		}
	})
}

// Run runs terraform with args in Dir and returns the combined output; it
// fails the test with the command and the output on a non-zero exit.
func (w *Workdir) Run(args ...string) string {
	w.t.Helper()
	code, out := w.RunErr(args...)
	if code != 0 {
		w.t.Fatalf("terraform %s in %s: exit %d\n%s", strings.Join(args, " "), w.Dir, code, out)
	}
	return out
}

// RunErr is Run that returns the exit code and the output instead of
// failing. It fails the test only when terraform cannot be started or
// exceeds its time limit (15 min).
func (w *Workdir) RunErr(args ...string) (code int, out string) {
	w.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, w.tf, args...)
	cmd.Dir = w.Dir
	cmd.Env = w.env
	// An interrupt lets terraform release its state lock and stop its
	// providers; WaitDelay kills it if it does not.
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
	cmd.WaitDelay = 30 * time.Second
	var buf bytes.Buffer
	cmd.Stdout = &buf
	cmd.Stderr = &buf
	err := cmd.Run()
	if ctx.Err() != nil {
		w.t.Fatalf("terraform %s in %s: still running after %v\n%s", strings.Join(args, " "), w.Dir, commandTimeout, buf.String())
	}
	var exit *exec.ExitError
	switch {
	case err == nil:
		return 0, buf.String()
	case errors.As(err, &exit) && exit.ExitCode() >= 0:
		return exit.ExitCode(), buf.String()
	default:
		w.t.Fatalf("terraform %s in %s: %v\n%s", strings.Join(args, " "), w.Dir, err, buf.String())
		return -1, buf.String()
	}
}

// Init runs terraform init; providers come from the local mirror only.
func (w *Workdir) Init() {
	w.t.Helper()
	w.Run("init", "-input=false", "-no-color")
}

// Validate runs terraform validate (after Init).
func (w *Workdir) Validate() {
	w.t.Helper()
	w.Run("validate", "-no-color")
}

// FmtCheck runs terraform fmt -check -recursive -diff on the module
// directory and fails the test, showing the diff, if a file is not in
// canonical format.
func (w *Workdir) FmtCheck() {
	w.t.Helper()
	w.Run("fmt", "-check", "-recursive", "-diff", "-no-color", ".")
}

// Vars are a module's input variables. They are passed as -var-file of a
// JSON file written to the test's temp dir (outside the module copy), so
// complex values (maps, lists, objects) work and secrets stay off the
// command line. A nil Vars passes no var file.
type Vars map[string]any

// varFile writes v for -var-file and returns the flag ("" for nil v).
func (w *Workdir) varFile(v Vars) (flag, path string) {
	w.t.Helper()
	if v == nil {
		return "", ""
	}
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		w.t.Fatalf("tftest: encoding variables as JSON: %v", err)
	}
	path = w.scratchFile("vars", ".tfvars.json")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		w.t.Fatalf("tftest: writing variables: %v", err)
	}
	return "-var-file=" + path, path
}

func (w *Workdir) scratchFile(prefix, suffix string) string {
	w.n++
	return filepath.Join(w.scratch, prefix+"-"+strconv.Itoa(w.n)+suffix)
}

func withFlag(args []string, flag string) []string {
	if flag == "" {
		return args
	}
	return append(args, flag)
}

// Plan runs plan -out and show -json and returns the parsed plan.
func (w *Workdir) Plan(v Vars) *Plan {
	w.t.Helper()
	flag, _ := w.varFile(v)
	planFile := w.scratchFile("plan", ".tfplan")
	w.Run(withFlag([]string{"plan", "-input=false", "-no-color", "-out=" + planFile}, flag)...)
	// show -json writes only the JSON to stdout, but Run combines the
	// streams; warnings go to stderr, so read stdout on its own here.
	code, out := w.stdout("show", "-json", "-no-color", planFile)
	if code != 0 {
		w.t.Fatalf("terraform show -json %s in %s: exit %d\n%s", planFile, w.Dir, code, out)
	}
	p, err := parsePlan([]byte(out))
	if err != nil {
		w.t.Fatalf("tftest: parsing terraform show -json: %v\n%s", err, out)
	}
	return p
}

// stdout runs terraform and returns its exit code and standard output only
// (standard error is appended on failure).
func (w *Workdir) stdout(args ...string) (int, string) {
	w.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, w.tf, args...)
	cmd.Dir = w.Dir
	cmd.Env = w.env
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case err == nil:
		return 0, stdout.String()
	case errors.As(err, &exit) && exit.ExitCode() >= 0:
		return exit.ExitCode(), stdout.String() + stderr.String()
	default:
		w.t.Fatalf("terraform %s in %s: %v\n%s%s", strings.Join(args, " "), w.Dir, err, stdout.String(), stderr.String())
		return -1, ""
	}
}

// Apply runs apply -auto-approve with v. The test's cleanup destroys what it
// made unless Destroy is called.
func (w *Workdir) Apply(v Vars) {
	w.t.Helper()
	flag, path := w.varFile(v)
	w.applied, w.destroyed, w.lastVars = true, false, path
	w.Run(withFlag([]string{"apply", "-auto-approve", "-input=false", "-no-color"}, flag)...)
}

// PlanIsEmpty runs plan -detailed-exitcode and fails unless it exits 0
// (nothing to change): the check that an applied module is idempotent.
func (w *Workdir) PlanIsEmpty(v Vars) {
	w.t.Helper()
	flag, _ := w.varFile(v)
	args := withFlag([]string{"plan", "-detailed-exitcode", "-input=false", "-no-color"}, flag)
	switch code, out := w.RunErr(args...); code {
	case 0:
	case 2:
		w.t.Fatalf("terraform plan in %s: changes pending where none were expected\n%s", w.Dir, out)
	default:
		w.t.Fatalf("terraform %s in %s: exit %d\n%s", strings.Join(args, " "), w.Dir, code, out)
	}
}

// Destroy runs destroy -auto-approve with v.
func (w *Workdir) Destroy(v Vars) {
	w.t.Helper()
	flag, _ := w.varFile(v)
	w.Run(withFlag([]string{"destroy", "-auto-approve", "-input=false", "-no-color"}, flag)...)
	w.destroyed = true
}

// Outputs runs `terraform output -json` and returns name -> value (decoded
// JSON: numbers are float64, objects map[string]any). Sensitive outputs are
// included with their values.
func (w *Workdir) Outputs() map[string]any {
	w.t.Helper()
	code, out := w.stdout("output", "-json", "-no-color")
	if code != 0 {
		w.t.Fatalf("terraform output -json in %s: exit %d\n%s", w.Dir, code, out)
	}
	var raw map[string]struct {
		Value any `json:"value"`
	}
	if err := json.Unmarshal([]byte(out), &raw); err != nil {
		w.t.Fatalf("tftest: parsing terraform output -json: %v\n%s", err, out)
	}
	res := make(map[string]any, len(raw))
	for k, v := range raw {
		res[k] = v.Value
	}
	return res
}
