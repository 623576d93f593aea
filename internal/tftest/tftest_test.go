package tftest

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestHome(t *testing.T) {
	t.Setenv("WEFT_TERRAFORM_HOME", "/srv/tf")
	if got := Home(); got != "/srv/tf" {
		t.Errorf("Home() with WEFT_TERRAFORM_HOME=/srv/tf = %q", got)
	}
	t.Setenv("WEFT_TERRAFORM_HOME", "")
	t.Setenv("HOME", "/home/u")
	if got, want := Home(), "/home/u/.cache/weft-terraform"; got != want {
		t.Errorf("Home() without WEFT_TERRAFORM_HOME = %q, want %q", got, want)
	}
}

// The version Require accepts is the one install.sh builds.
func TestVersionMatchesVersionsEnv(t *testing.T) {
	f, err := os.Open("../../terraform/tools/versions.env")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if v, ok := strings.CutPrefix(s.Text(), "TERRAFORM_VERSION="); ok {
			if v != TerraformVersion {
				t.Errorf("versions.env pins terraform %s, tftest.TerraformVersion is %s", v, TerraformVersion)
			}
			return
		}
	}
	t.Fatal("versions.env has no TERRAFORM_VERSION=")
}

func TestMissingToolsMessage(t *testing.T) {
	home := t.TempDir()
	_, err := findTerraform(home)
	if err == nil {
		t.Fatal("findTerraform in an empty home succeeded")
	}
	for _, want := range []string{"terraform v1.5.7 not found under " + home, "run make terraform-tools"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("missing-tools error %q does not say %q", err, want)
		}
	}

	// A terraform of another version (e.g. one on PATH copied in) is not accepted.
	if err := os.MkdirAll(filepath.Join(home, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	fake := "#!/bin/sh\necho 'Terraform v1.11.4'\necho 'on linux_amd64'\n"
	if err := os.WriteFile(filepath.Join(home, "bin", "terraform"), []byte(fake), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(home, "terraformrc"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = findTerraform(home)
	if err == nil || !strings.Contains(err.Error(), "v1.11.4") || !strings.Contains(err.Error(), "make terraform-tools") {
		t.Errorf("findTerraform with a v1.11.4 binary: %v, want an error naming the version and make terraform-tools", err)
	}

	if _, _, err := checkCloudConfig(home, filepath.Join(home, "x.yaml")); err == nil || !strings.Contains(err.Error(), "run make terraform-tools") {
		t.Errorf("checkCloudConfig without the checker: %v, want an error saying run make terraform-tools", err)
	}
}

func TestCommandEnv(t *testing.T) {
	env := commandEnv([]string{
		"PATH=/bin", "TF_CLI_CONFIG_FILE=/nonexistent", "TF_DATA_DIR=/elsewhere",
		"TF_CLI_ARGS_plan=-refresh=false", "TF_IN_AUTOMATION=", "TF_VAR_x=1",
	}, "/h")
	want := []string{"PATH=/bin", "TF_VAR_x=1", "TF_CLI_CONFIG_FILE=/h/terraformrc",
		"CHECKPOINT_DISABLE=1", "TF_IN_AUTOMATION=1", "TF_INPUT=0"}
	if !reflect.DeepEqual(env, want) {
		t.Errorf("commandEnv = %q, want %q", env, want)
	}
}

func TestCopyTreeSkipsLocalState(t *testing.T) {
	src := t.TempDir()
	files := map[string]string{
		"main.tf":                          "a",
		"mod/x.tf":                         "b",
		"mod/.terraform/providers/p":       "state",
		".terraform/terraform.tfstate":     "state",
		"terraform.tfstate":                "state",
		"terraform.tfstate.backup":         "state",
		".terraform.tfstate.lock.info":     "state",
		".terraform.lock.hcl":              "lock",
		"mod/.terraform.lock.hcl":          "lock",
		"mod/templates/cloud-init.yaml.tp": "c",
	}
	for name, data := range files {
		p := filepath.Join(src, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	dst := filepath.Join(t.TempDir(), "copy")
	if err := copyTree(src, dst); err != nil {
		t.Fatal(err)
	}
	var got []string
	err := filepath.WalkDir(dst, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			rel, _ := filepath.Rel(dst, p)
			got = append(got, rel)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"main.tf", "mod/templates/cloud-init.yaml.tp", "mod/x.tf"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("copied %q, want %q", got, want)
	}
}

func TestPlanChangeNamesAddresses(t *testing.T) {
	p, err := parsePlan([]byte(`{"resource_changes":[{"address":"a.b","type":"a","name":"b","change":{"actions":["create"],"after":{"x":1}}}]}`))
	if err != nil {
		t.Fatal(err)
	}
	if rc, err := p.change("a.b"); err != nil || rc.After["x"] != 1.0 || rc.Actions[0] != "create" {
		t.Errorf("change(a.b) = %+v, %v", rc, err)
	}
	if _, err := p.change("a.c"); err == nil || !strings.Contains(err.Error(), "a.b") {
		t.Errorf("change(a.c) = %v, want an error listing a.b", err)
	}
}

// The fixture module's whole life: init, validate, fmt, plan, apply,
// idempotence, a change, destroy.
func TestLifecycle(t *testing.T) {
	w := New(t, "testdata", "basic")
	if strings.HasPrefix(w.Dir, mustAbs(t, "testdata")) {
		t.Fatalf("Workdir.Dir %s is inside the source tree, not a copy", w.Dir)
	}
	w.Init()
	if _, err := os.Stat(filepath.Join("testdata", "basic", ".terraform")); err == nil {
		t.Error("init wrote .terraform into the source tree")
	}
	w.Validate()
	w.FmtCheck()

	out := filepath.Join(t.TempDir(), "out.txt")
	v := Vars{"path": out, "content": "one", "labels": map[string]string{"b": "2", "a": "1"}, "secret": "s3cret"}
	p := w.Plan(v)
	file := p.Change(t, "local_file.out")
	if !reflect.DeepEqual(file.Actions, []string{"create"}) {
		t.Errorf("local_file.out actions %v, want [create]", file.Actions)
	}
	if file.After["filename"] != out || file.After["content"] != "one\na=1,b=2\n" || file.After["file_permission"] != "0644" {
		t.Errorf("local_file.out after = %v", file.After)
	}
	for _, addr := range []string{"terraform_data.marker", "null_resource.trigger"} {
		if rc := p.Change(t, addr); !reflect.DeepEqual(rc.Actions, []string{"create"}) {
			t.Errorf("%s actions %v, want [create]", addr, rc.Actions)
		}
	}
	if oc := p.OutputChanges["label"]; oc.After != "a=1,b=2" || !reflect.DeepEqual(oc.Actions, []string{"create"}) {
		t.Errorf("output label change = %+v", oc)
	}
	if oc := p.OutputChanges["secret"]; oc.AfterSensitive != true {
		t.Errorf("output secret after_sensitive = %v, want true", oc.AfterSensitive)
	}
	if len(p.Raw) == 0 {
		t.Error("Plan.Raw is empty")
	}
	if _, err := os.Stat(out); err == nil {
		t.Fatal("plan wrote the file")
	}

	w.Apply(v)
	if data, err := os.ReadFile(out); err != nil || string(data) != "one\na=1,b=2\n" {
		t.Fatalf("after apply: %q, %v", data, err)
	}
	o := w.Outputs()
	if o["path"] != out || o["label"] != "a=1,b=2" || o["secret"] != "s3cret" {
		t.Errorf("outputs = %v", o)
	}
	w.PlanIsEmpty(v)

	v["content"] = "two"
	p = w.Plan(v)
	if got := p.Change(t, "local_file.out").Actions; !reflect.DeepEqual(got, []string{"delete", "create"}) {
		t.Errorf("new content: local_file.out actions %v, want a replacement [delete create]", got)
	}
	if got := p.Change(t, "terraform_data.marker").Actions; !reflect.DeepEqual(got, []string{"update"}) {
		t.Errorf("new content: terraform_data.marker actions %v, want [update]", got)
	}
	if got := p.Change(t, "null_resource.trigger").Actions; !reflect.DeepEqual(got, []string{"delete", "create"}) {
		t.Errorf("new content: null_resource.trigger actions %v, want [delete create]", got)
	}
	if code, _ := w.RunErr("plan", "-detailed-exitcode", "-input=false", "-var-file="+writeVars(t, v)); code != 2 {
		t.Errorf("plan -detailed-exitcode with changed content exited %d, want 2", code)
	}

	w.Destroy(v)
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Errorf("after destroy the file is still there (%v)", err)
	}
}

// A test that applies and does not destroy leaves nothing behind.
func TestCleanupDestroys(t *testing.T) {
	out := filepath.Join(t.TempDir(), "out.txt")
	t.Run("apply", func(t *testing.T) {
		w := New(t, "testdata", "basic")
		w.Init()
		w.Apply(Vars{"path": out, "content": "left"})
		if _, err := os.Stat(out); err != nil {
			t.Fatalf("apply did not write the file: %v", err)
		}
	})
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Errorf("the subtest's cleanup did not destroy its file (%v)", err)
	}
}

func TestFmtCheckFindsBadFormat(t *testing.T) {
	w := New(t, "testdata", "badfmt")
	code, out := w.RunErr("fmt", "-check", "-recursive", "-diff", "-no-color", ".")
	if code == 0 || !strings.Contains(out, "main.tf") {
		t.Errorf("fmt -check on a badly formatted module: exit %d, output %q; want non-zero naming main.tf", code, out)
	}
	w2 := New(t, "testdata", "basic")
	w2.FmtCheck()
}

func TestValidateCloudConfig(t *testing.T) {
	valid := []byte("#cloud-config\npackages: [wireguard-tools]\nruncmd:\n  - [systemctl, enable, --now, weft-agent]\nwrite_files:\n  - path: /etc/weft/agent.yaml\n    permissions: '0600'\n    content: |\n      node: a\n")
	if ok, msg := ValidateCloudConfig(t, valid); !ok {
		t.Fatalf("valid cloud-config rejected: %s", msg)
	}
	invalid := []byte("#cloud-config\nruncmd: 5\n")
	ok, msg := CheckCloudConfig(t, invalid)
	if ok || !strings.Contains(msg, "runcmd") {
		t.Errorf("CheckCloudConfig(runcmd: 5) = %v, %q; want invalid with a message naming runcmd", ok, msg)
	}

	// ValidateCloudConfig fails the test for invalid input.
	rec := &recordTB{TB: t}
	if ok, _ := ValidateCloudConfig(rec, invalid); ok || len(rec.errors) != 1 || !strings.Contains(rec.errors[0], "runcmd") {
		t.Errorf("ValidateCloudConfig(runcmd: 5) = %v, test errors %q; want false and one error naming runcmd", ok, rec.errors)
	}
}

// recordTB records Errorf instead of failing the real test.
type recordTB struct {
	testing.TB
	errors []string
}

func (r *recordTB) Errorf(format string, args ...any) {
	r.errors = append(r.errors, fmt.Sprintf(format, args...))
}

func writeVars(t *testing.T, v Vars) string {
	t.Helper()
	w := &Workdir{t: t, scratch: t.TempDir()}
	_, p := w.varFile(v)
	return p
}

func mustAbs(t *testing.T, p string) string {
	t.Helper()
	a, err := filepath.Abs(p)
	if err != nil {
		t.Fatal(err)
	}
	return a
}
