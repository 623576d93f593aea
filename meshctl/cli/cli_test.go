package cli

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/urfave/cli/v2"
)

// runApp runs meshctl in this process and returns stdout, stderr and the
// error Run returned.
func runApp(t *testing.T, args ...string) (string, string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	err := Run(context.Background(), args, strings.NewReader(""), &out, &errOut)
	return out.String(), errOut.String(), err
}

// `meshctl --help` lists every command, in the order of commands(): the
// first steps (up, join, status) first.
func TestHelpListsEveryCommandInOrder(t *testing.T) {
	out, _, err := runApp(t, "--help")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"up", "join", "status", "ping", "token", "cluster", "leave", "down", "nodes", "node", "endpoint, endpoints", "identities",
		"policy", "observe", "rotate-key", "connectivity", "admin", "version", "completion", "lab", "help, h"}
	var got []string
	inCommands := false
	for _, line := range strings.Split(out, "\n") {
		switch {
		case strings.TrimSpace(line) == "COMMANDS:":
			inCommands = true
		case inCommands && strings.TrimSpace(line) == "":
			inCommands = false
		case inCommands:
			name, _, _ := strings.Cut(strings.TrimSpace(line), "  ")
			got = append(got, name)
		}
	}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("meshctl --help lists\n  %s\nwant\n  %s\n%s", strings.Join(got, "|"), strings.Join(want, "|"), out)
	}
	for _, cmd := range commands() {
		if !strings.Contains(out, cmd.Usage) {
			t.Errorf("meshctl --help lacks %s's usage %q", cmd.Name, cmd.Usage)
		}
	}
}

func TestExitStatus(t *testing.T) {
	for _, tt := range []struct {
		err    error
		code   int
		stderr string
	}{
		{nil, 0, ""},
		{errors.New("no such node"), 1, "meshctl: no such node\n"},
		{cli.Exit("", 7), 7, ""}, // lab exec: the command's own status, nothing added
		{cli.Exit("meshctl: ping in n1: killed", 1), 1, "meshctl: ping in n1: killed\n"},
	} {
		var b bytes.Buffer
		if code := ExitStatus(tt.err, &b); code != tt.code || b.String() != tt.stderr {
			t.Errorf("ExitStatus(%v) = %d, %q; want %d, %q", tt.err, code, b.String(), tt.code, tt.stderr)
		}
	}
}
