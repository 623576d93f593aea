package cli

import (
	"encoding/json"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

func TestVersionShowsMeshctlAndTheAgent(t *testing.T) {
	sock := serveHealth(t, &healthAgent{health: reached}, nil)
	out, _, err := runApp(t, "version", "--socket", sock)
	line := regexp.MustCompile(`(?m)^(meshctl|weft-agent) +\S+ \(commit \S+?(, modified)?, built .+, go1\.\S+, \w+/\w+\)$`)
	if err != nil || len(line.FindAllString(out, -1)) != 2 {
		t.Errorf("version: %v\n%s", err, out)
	}
	out, _, err = runApp(t, "-o", "json", "--socket", sock, "version")
	var v versionView
	if err != nil || json.Unmarshal([]byte(out), &v) != nil || v.Agent == nil || v.Client.GoVersion == "" || v.Agent.Version != v.Client.Version {
		t.Errorf("version -o json: %v\n%s", err, out)
	}
	none := filepath.Join(t.TempDir(), "none.sock")
	out, _, err = runApp(t, "version", "--socket", none)
	if err == nil || !strings.Contains(err.Error(), "meshctl version --client") || !strings.Contains(out, "weft-agent  unknown (the agent is not reachable)") {
		t.Errorf("version without an agent: %v\n%s", err, out)
	}
	if out, _, err := runApp(t, "version", "--client", "--socket", none); err != nil || strings.Contains(out, "weft-agent") || !strings.HasPrefix(out, "meshctl ") {
		t.Errorf("version --client: %v\n%s", err, out)
	}
}
