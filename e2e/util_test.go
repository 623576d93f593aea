package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"testing"

	"github.com/weftmesh/weft/agent/join"
)

// hostCmd runs a command on the host (tools like tcpdump -r that only read
// a file) and returns its combined output.
func hostCmd(name string, args ...string) (string, error) {
	out, err := exec.Command(name, args...).CombinedOutput()
	return string(out), err
}

func jsonUnmarshal(s string, v any) error { return json.Unmarshal([]byte(s), v) }

// tokenWithCA returns token with its CA fingerprint replaced, still in
// the canonical form meshctl accepts, so the join gets as far as the TLS
// handshake and is refused there.
func tokenWithCA(t *testing.T, token, caHash string) string {
	t.Helper()
	tok, err := join.ParseToken(token)
	if err != nil {
		t.Fatal(err)
	}
	tok.CAHash = caHash
	return tok.String()
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
