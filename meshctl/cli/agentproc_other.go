//go:build !linux

package cli

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"time"

	"github.com/weftmesh/weft/agent/api"
)

// localAgentSupported refuses the commands that run weft-agent on this
// machine: the agent drives WireGuard, eBPF and network namespaces, which
// only Linux has. The other commands work from here against a remote
// agent.
func localAgentSupported(cmd string) error {
	return fmt.Errorf("meshctl %s runs weft-agent on this machine, and the agent needs Linux (WireGuard, eBPF, network namespaces), not %s: "+
		"run it on the Linux machine (ssh -t HOST sudo meshctl %s ...); from here, meshctl can talk to a remote agent "+
		"through its forwarded socket (see docs/cli.md, \"meshctl from a Mac\")", cmd, runtime.GOOS, cmd)
}

// explainForPlatform completes "the agent is not running": on this OS no
// agent ever runs locally, so what the user needs is a forwarded socket,
// not `meshctl up`.
func explainForPlatform(err error) error {
	if !errors.Is(err, api.ErrAgentNotRunning) {
		return err
	}
	return fmt.Errorf("%w\n(on %s no agent runs locally: forward a Linux node's agent socket, "+
		"e.g. ssh -N -L /tmp/weft.sock:/run/weft/agent.sock root@NODE, then use --socket /tmp/weft.sock or WEFT_SOCKET=/tmp/weft.sock; see docs/cli.md)", err, runtime.GOOS)
}

// The process management below is never reached: up, join and leave stop
// at localAgentSupported. It exists so the portable code links.

func launchAgent(context.Context, string, launchSpec) (*agentProc, error) {
	return nil, localAgentSupported("up or join")
}

func systemdRuns() bool { return false }

func sameNetnsAsInit() bool { return false }

func stopBackgroundAgent(string) {}

func agentPID(string) (int, error) { return 0, localAgentSupported("down") }

func stopAgentPID(int, time.Duration) error { return localAgentSupported("down") }

func waitExit(int, time.Duration) bool { return true }

func isAgentProcess(int) bool { return false }
