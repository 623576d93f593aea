//go:build !linux

package cli

import (
	"errors"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/weftmesh/weft/agent/api"
)

// Off Linux, the commands that run the agent or the lab here refuse
// before doing anything, saying why and what to do instead.
func TestLocalAgentCommandsSayTheyNeedLinux(t *testing.T) {
	dir := t.TempDir()
	for _, args := range [][]string{
		{"up", "--config-file", filepath.Join(dir, "agent.yaml")},
		{"join", "weft1.eyJzIjoi", "--config-file", filepath.Join(dir, "agent.yaml")},
		{"leave", "--config-file", filepath.Join(dir, "agent.yaml")},
		{"lab", "up"},
		{"lab", "status"},
		{"lab", "exec", "n1", "--", "true"},
		{"lab", "down", "--all"},
	} {
		_, _, err := runApp(t, args...)
		if err == nil || !strings.Contains(err.Error(), runtime.GOOS) || !strings.Contains(err.Error(), "Linux") {
			t.Errorf("meshctl %s: %v, want a refusal naming Linux and %s", strings.Join(args, " "), err, runtime.GOOS)
		}
	}
}

// "The agent is not running" comes with how to reach a remote one.
func TestUnreachableAgentSuggestsAForwardedSocket(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "agent.sock")
	_, _, err := runApp(t, "status", "--socket", sock)
	if !errors.Is(err, api.ErrAgentNotRunning) || !strings.Contains(err.Error(), "ssh -N -L") || !strings.Contains(err.Error(), "--socket") {
		t.Errorf("status without an agent: %v", err)
	}
}
