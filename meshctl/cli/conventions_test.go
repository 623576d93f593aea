package cli

import (
	"bytes"
	"encoding/json"
	"io"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// A mistyped command is named, with the command meant when one is close,
// in one line and a hint, and exits 2.
func TestUnknownCommandSuggestsTheOneMeant(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"bogus"}, "meshctl: unknown command \"bogus\"\nSee 'meshctl --help'."},
		{[]string{"stauts"}, "meshctl: unknown command \"stauts\": did you mean \"status\"?\nSee 'meshctl --help'."},
		{[]string{"joni", "TOKEN"}, "meshctl: unknown command \"joni\": did you mean \"join\"?\nSee 'meshctl --help'."},
		{[]string{"polcy", "list"}, "meshctl: unknown command \"polcy\": did you mean \"policy\"?\nSee 'meshctl --help'."},
		{[]string{"token", "bogus"}, "meshctl token: unknown command \"bogus\"\nSee 'meshctl token --help'."},
		{[]string{"token", "craete"}, "meshctl token: unknown command \"craete\": did you mean \"create\"?\nSee 'meshctl token --help'."},
	} {
		out, _, err := runApp(t, tt.args...)
		if err == nil || err.Error() != tt.want {
			t.Errorf("meshctl %s: %v, want %q", strings.Join(tt.args, " "), err, tt.want)
		}
		if strings.Contains(out, "COMMANDS:") {
			t.Errorf("meshctl %s printed the help:\n%s", strings.Join(tt.args, " "), out)
		}
		var b bytes.Buffer
		if code := ExitStatus(err, &b); code != UsageExitCode || b.String() != tt.want+"\n" {
			t.Errorf("meshctl %s: exit %d, stderr %q", strings.Join(tt.args, " "), code, b.String())
		}
	}
}

// A bad flag, a missing value, a bad value and a missing required flag
// are one line saying what is wrong and a hint, not the whole help.
func TestUsageErrorsAreOneLineAndAHint(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "none.sock")
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"status", "--bogus"}, "meshctl status: unknown flag --bogus\nSee 'meshctl status --help'."},
		{[]string{"status", "--sokcet", sock}, "meshctl status: unknown flag --sokcet: did you mean --socket?\nSee 'meshctl status --help'."},
		{[]string{"status", "--socket"}, "meshctl status: --socket needs a value\nSee 'meshctl status --help'."},
		{[]string{"ping", "--count", "many", "b"}, "meshctl ping: --count \"many\": parse error\nSee 'meshctl ping --help'."},
		{[]string{"status", "--wait=soon"}, "meshctl status: --wait \"soon\": not a duration: write --wait=30s or --wait=2m, or --wait alone for 2m0s\nSee 'meshctl status --help'."},
		{[]string{"policy", "apply", "--socket", sock}, "meshctl policy apply: missing the flag --file\nSee 'meshctl policy apply --help'."},
		{[]string{"ping", "--socket", sock}, "meshctl ping: one node name or IP address is needed (see 'meshctl nodes'), got 0 arguments\nSee 'meshctl ping --help'."},
		{[]string{"completion", "tcsh"}, "meshctl completion: no completion for the shell \"tcsh\": use bash, zsh or fish\nSee 'meshctl completion --help'."},
		{[]string{"--socket"}, "meshctl: --socket needs a value\nSee 'meshctl --help'."},
	} {
		out, _, err := runApp(t, tt.args...)
		if err == nil || err.Error() != tt.want {
			t.Errorf("meshctl %s: %v, want %q", strings.Join(tt.args, " "), err, tt.want)
			continue
		}
		if out != "" {
			t.Errorf("meshctl %s printed on stdout (the help?):\n%s", strings.Join(tt.args, " "), out)
		}
		if code := ExitStatus(err, io.Discard); code != UsageExitCode {
			t.Errorf("meshctl %s: exit %d, want %d", strings.Join(tt.args, " "), code, UsageExitCode)
		}
	}
}

// Global flags go before the command too; the command's own flag, written
// after it, wins; an explicit flag wins over WEFT_SOCKET.
func TestGlobalFlagsBeforeTheCommand(t *testing.T) {
	_, sock := startFake(t)
	t.Setenv("WEFT_SOCKET", filepath.Join(t.TempDir(), "other.sock"))
	for _, args := range [][]string{
		{"--socket", sock, "status"},
		{"--socket=" + sock, "-o", "json", "status"},
		{"-o=json", "--socket", sock, "policy", "list"},
		{"--output", "json", "--socket", sock, "endpoint", "list", "--local"},
		{"--socket", filepath.Join(t.TempDir(), "wrong.sock"), "nodes", "--socket", sock},
	} {
		out, _, err := runApp(t, args...)
		if err != nil {
			t.Errorf("meshctl %s: %v", strings.Join(args, " "), err)
			continue
		}
		if slices.Contains(args, "json") || slices.Contains(args, "-o=json") {
			if !json.Valid([]byte(out)) {
				t.Errorf("meshctl %s: not JSON:\n%s", strings.Join(args, " "), out)
			}
		}
	}
	if _, _, err := runApp(t, "-o", "json", "lab", "list"); err == nil || !strings.HasPrefix(err.Error(), "meshctl lab: no flag -o here") {
		t.Errorf("a global flag before a command without it: %v", err)
	}
	// Without a command the app's own flags take them, for --help.
	if out, _, err := runApp(t, "--socket", sock, "--help"); err != nil || !strings.Contains(out, "GLOBAL OPTIONS") || !strings.Contains(out, "--socket PATH") {
		t.Errorf("meshctl --socket S --help: %v\n%s", err, out)
	}
}

func TestSuggest(t *testing.T) {
	names := []string{"up", "join", "status", "ping", "policy", "token", "observe"}
	for typed, want := range map[string]string{"stauts": "status", "statu": "status", "pnig": "ping", "obsreve": "observe", "xyz": "", "u": "", "po": "", "tokn": "token"} {
		if got := suggest(typed, names); got != want {
			t.Errorf("suggest(%q) = %q, want %q", typed, got, want)
		}
	}
}
