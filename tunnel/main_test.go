package tunnel

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"testing"
)

// TestMain lets the test binary play the two other processes of a node:
// the userspace device helper (as the agent binary does with a hidden
// subcommand) and a stand-in agent for the restart test.
func TestMain(m *testing.M) {
	if HelperRequested() {
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
		defer stop()
		log := slog.New(slog.NewTextHandler(os.Stderr, nil))
		if err := RunHelperFromEnv(ctx, log); err != nil {
			fmt.Fprintln(os.Stderr, "helper:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	if os.Getenv(envTestAgent) != "" {
		os.Exit(runTestAgent())
	}
	os.Exit(m.Run())
}
