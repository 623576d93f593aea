package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"

	"github.com/weftmesh/weft/agent/config"
	"github.com/weftmesh/weft/bpf"
	"github.com/weftmesh/weft/tunnel"
)

// TeardownResult says what Teardown found and removed.
type TeardownResult struct {
	// Interface is the WireGuard device removed ("" when there was none).
	Interface string
	// PinDir is the bpffs directory removed with the programs attached
	// from it ("" when there was none).
	PinDir string
}

// Teardown removes what a stopped agent of cfg left running on purpose so
// that a restart does not interrupt traffic: the WireGuard device (and its
// userspace helper) and the eBPF datapath (programs and pinned maps). It
// touches neither etcd nor the node's credentials and keys: `meshctl down`
// runs it after stopping the agent, and `meshctl leave` when no agent ran.
// Run it in the node's network namespace, with no agent of cfg running (a
// running one would bring the device back).
func Teardown(ctx context.Context, cfg *config.Config, opts Options) (TeardownResult, error) {
	var res TeardownResult
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.OpenTunnel == nil {
		opts.OpenTunnel = openKernelTunnel
	}
	if opts.OpenDatapath == nil {
		opts.OpenDatapath = openKernelDatapath
	}
	var errs []error
	// Opening a device that is not there would make one (and a key):
	// only an existing interface is attached to and destroyed.
	name := cfg.WireGuard.Interface
	if name == "" {
		name = tunnel.DefaultName
	}
	if _, err := net.InterfaceByName(name); err == nil {
		mode := tunnel.ModeAuto
		if cfg.WireGuard.Mode == "userspace" {
			mode = tunnel.ModeUserspace
		}
		t, err := opts.OpenTunnel(ctx, tunnel.Config{
			Name:         name,
			ListenPort:   cfg.WireGuard.ListenPort,
			StateDir:     filepath.Join(cfg.StateDir, "wireguard"),
			IPv4Underlay: true,
			Mode:         mode,
			Helper:       opts.TunnelHelper,
			Logger:       opts.Logger.With("component", "tunnel"),
		})
		if err != nil {
			errs = append(errs, fmt.Errorf("attaching to WireGuard device %s: %w", name, err))
		} else if err := t.Destroy(); err != nil {
			errs = append(errs, fmt.Errorf("removing WireGuard device %s: %w", name, err))
		} else {
			res.Interface = name
		}
	}
	scope := bpfScope(cfg.Cluster, cfg.NodeName)
	pinDir := filepath.Join(cfg.BPF.PinPath, scope)
	if _, err := os.Stat(pinDir); err == nil {
		dp, err := opts.OpenDatapath(bpf.Config{Scope: scope, PinRoot: cfg.BPF.PinPath, Logger: opts.Logger.With("component", "datapath")})
		if err != nil {
			// The pins alone still go: removing them releases the maps and
			// the TCX links pinned there.
			errs = append(errs, fmt.Errorf("opening the datapath pinned in %s: %w", pinDir, err))
			if err := os.RemoveAll(pinDir); err != nil {
				errs = append(errs, err)
			}
		} else if err := dp.Remove(); err != nil {
			errs = append(errs, fmt.Errorf("removing the datapath pinned in %s: %w", pinDir, err))
		} else {
			res.PinDir = pinDir
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	return res, errors.Join(errs...)
}
