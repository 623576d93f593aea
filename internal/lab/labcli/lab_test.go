package labcli

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/urfave/cli/v2"
)

// runApp runs the lab in this process (args as after `meshctl lab`) and
// returns stdout, stderr and the error Run returned.
func runApp(t *testing.T, args ...string) (string, string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	err := Run(context.Background(), args, strings.NewReader(""), &out, &errOut)
	return out.String(), errOut.String(), err
}

// weft-lab's help is meshctl lab's: the name people type, every command.
func TestHelpIsMeshctlLabs(t *testing.T) {
	for _, args := range [][]string{nil, {"--help"}, {"-h"}, {"help"}} {
		out, _, err := runApp(t, args...)
		if err != nil {
			t.Fatalf("%q: %v", args, err)
		}
		if !strings.HasPrefix(out, "NAME:\n   meshctl lab - build and drive a network-namespace lab") {
			t.Errorf("%q: help does not start with meshctl lab's name:\n%s", args, out)
		}
		for _, cmd := range []string{"up", "status", "exec", "cut", "heal", "down"} {
			if !strings.Contains(out, "\n   "+cmd+" ") {
				t.Errorf("%q: help lacks %s:\n%s", args, cmd, out)
			}
		}
	}
	out, _, err := runApp(t, "up", "--help")
	if err != nil || !strings.Contains(out, "USAGE:\n   meshctl lab up -f topo.yaml [--name NAME] [--hold] [--owns PATH]... [--record FILE]\n") ||
		!strings.Contains(out, "--nat-kind KIND") || !strings.Contains(out, "[--nat-kind eim|symmetric]") {
		t.Errorf("up --help: %v\n%s", err, out)
	}
	for cmd, usage := range map[string]string{
		"cut":  "meshctl lab cut [--lab NAME] [-o table|json] SITE_A SITE_B",
		"heal": "meshctl lab heal [--lab NAME] [-o table|json] SITE_A SITE_B | --all",
	} {
		out, _, err := runApp(t, cmd, "--help")
		if err != nil || !strings.Contains(out, "USAGE:\n   "+usage+"\n") || !strings.Contains(out, "--lab value") || !strings.Contains(out, "--output value, -o value") {
			t.Errorf("%s --help: %v\n%s", cmd, err, out)
		}
	}
}

func TestUnknownLabCommandSaysWhereToLook(t *testing.T) {
	_, _, err := runApp(t, "bogus")
	if want := `unknown command "bogus" for "meshctl lab": see meshctl lab --help`; err == nil || err.Error() != want {
		t.Errorf("bogus: %v, want %q", err, want)
	}
}

func TestExitStatus(t *testing.T) {
	for _, tt := range []struct {
		err    error
		code   int
		stderr string
	}{
		{nil, 0, ""},
		{errors.New("no such lab"), 1, "meshctl: no such lab\n"},
		{cli.Exit("", 7), 7, ""}, // lab exec: the command's own status, nothing added
		{cli.Exit("meshctl: ping in n1: killed", 1), 1, "meshctl: ping in n1: killed\n"},
	} {
		var b bytes.Buffer
		if code := ExitStatus(tt.err, &b); code != tt.code || b.String() != tt.stderr {
			t.Errorf("ExitStatus(%v) = %d, %q; want %d, %q", tt.err, code, b.String(), tt.code, tt.stderr)
		}
	}
}
