package e2e

import (
	"encoding/base64"
	"encoding/json"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// hostCmd runs a command on the host (tools like tcpdump -r that only read
// a file) and returns its combined output.
func hostCmd(name string, args ...string) (string, error) {
	out, err := exec.Command(name, args...).CombinedOutput()
	return string(out), err
}

func jsonUnmarshal(s string, v any) error { return json.Unmarshal([]byte(s), v) }

// tokenWithCA re-encodes a join token with another CA fingerprint: what a
// token for a different mesh (or a tampered one) looks like.
func tokenWithCA(t *testing.T, token, caHash string) string {
	t.Helper()
	body, ok := strings.CutPrefix(token, "weft1.")
	if !ok {
		t.Fatalf("unexpected token format %q", token)
	}
	raw, err := base64.RawURLEncoding.DecodeString(body)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]string
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	m["c"] = caHash
	raw, _ = json.Marshal(m)
	return "weft1." + base64.RawURLEncoding.EncodeToString(raw)
}

// pidsInNetns lists the processes whose network namespace is the named
// one (by inode), so a test can end what it started there.
func pidsInNetns(t *testing.T, name string) []int {
	t.Helper()
	var want syscall.Stat_t
	if err := syscall.Stat("/var/run/netns/"+name, &want); err != nil {
		t.Fatal(err)
	}
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		var st syscall.Stat_t
		if syscall.Stat("/proc/"+e.Name()+"/ns/net", &st) == nil && st.Ino == want.Ino && st.Dev == want.Dev {
			pids = append(pids, pid)
		}
	}
	return pids
}
