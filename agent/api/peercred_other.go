//go:build !linux

package api

import (
	"context"
	"net"
)

// withPeerCred records nothing off Linux, where no agent runs: this build
// serves clients (meshctl on a Mac) and tests.
func withPeerCred(ctx context.Context, _ net.Conn) context.Context { return ctx }
