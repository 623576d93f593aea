package cli

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// The bash script parses, and completing in a real bash offers the
// subcommands, also after a global flag and its value, and nested ones.
func TestBashCompletion(t *testing.T) {
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Skip("no bash on this machine")
	}
	script, _, err := runApp(t, "completion", "bash")
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "meshctl.bash")
	if err := os.WriteFile(file, []byte(script), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(bash, "-n", file).CombinedOutput(); err != nil {
		t.Fatalf("bash -n: %v\n%s", err, out)
	}
	complete := func(words ...string) string {
		t.Helper()
		quoted := make([]string, len(words))
		for i, w := range words {
			quoted[i] = "'" + w + "'"
		}
		prog := `source "$1"; COMP_WORDS=(` + strings.Join(quoted, " ") + `); COMP_CWORD=$((${#COMP_WORDS[@]}-1)); _meshctl; echo "${COMPREPLY[*]}"`
		out, err := exec.Command(bash, "-c", prog, "bash", file).CombinedOutput()
		if err != nil {
			t.Fatalf("completing %v: %v\n%s", words, err, out)
		}
		return strings.TrimSpace(string(out))
	}
	for _, tt := range []struct {
		words []string
		want  string
	}{
		{[]string{"meshctl", "sta"}, "status"},
		{[]string{"meshctl", "--socket", "/run/x.sock", "pi"}, "ping"},
		{[]string{"meshctl", "policy", "ap"}, "apply"},
		{[]string{"meshctl", "status", "--al"}, "--all"},
		{[]string{"meshctl", "completion", "--"}, "--help"},
		{[]string{"meshctl", "token", "c"}, "create"},
	} {
		if got := complete(tt.words...); got != tt.want {
			t.Errorf("completing %q: %q, want %q", strings.Join(tt.words, " "), got, tt.want)
		}
	}
}

func TestZshAndFishCompletion(t *testing.T) {
	zsh, _, err := runApp(t, "completion", "zsh")
	if err != nil || !strings.HasPrefix(zsh, "#compdef meshctl\n") || !strings.Contains(zsh, "'policy apply'") || !strings.Contains(zsh, "compdef _meshctl meshctl") {
		t.Errorf("zsh: %v\n%s", err, zsh)
	}
	if path, err := exec.LookPath("zsh"); err == nil {
		if out, err := exec.Command(path, "-n", "-c", zsh).CombinedOutput(); err != nil {
			t.Errorf("zsh -n: %v\n%s", err, out)
		}
	}
	fish, _, err := runApp(t, "completion", "fish")
	if err != nil || !strings.Contains(fish, "complete -c meshctl") || !strings.Contains(fish, "status") {
		t.Errorf("fish: %v\n%s", err, fish)
	}
}
