// Command weftnode brings up a Weft tunnel for the tunnel benchmark
// without the rest of the agent: `weftnode up` opens (or re-attaches to)
// the device and reconciles one peer, then exits while the userspace
// helper keeps the device running, as it does across agent restarts;
// `weftnode down` removes it.
//
//	weftnode up   -name wbt0 -state DIR -addr 100.64.1.1/32 [-port 51833] [-peer KEY -endpoint IP:PORT -allowed 100.64.1.2/32]
//	weftnode down -name wbt0 -state DIR
//
// `up` prints the device's public key. Run it inside the node's network
// namespace.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"syscall"

	"github.com/weftmesh/weft/tunnel"
)

const helperCmd = "__device-helper"

func main() {
	if len(os.Args) >= 2 && os.Args[1] == helperCmd {
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
		defer stop()
		if err := tunnel.RunHelperFromEnv(ctx, slog.New(slog.NewTextHandler(os.Stderr, nil))); err != nil {
			fmt.Fprintln(os.Stderr, "weftnode helper:", err)
			os.Exit(1)
		}
		return
	}
	if len(os.Args) < 2 || (os.Args[1] != "up" && os.Args[1] != "down") {
		fmt.Fprintln(os.Stderr, "usage: weftnode up|down -name NAME -state DIR [...]")
		os.Exit(2)
	}
	fs := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	name := fs.String("name", tunnel.DefaultName, "interface name")
	state := fs.String("state", "", "state directory (private key)")
	addr := fs.String("addr", "", "mesh address of this node, e.g. 100.64.1.1/32")
	port := fs.Int("port", tunnel.DefaultPort, "UDP listen port")
	mtu := fs.Int("mtu", 0, "tunnel MTU (0: from the underlay)")
	peer := fs.String("peer", "", "peer public key")
	endpoint := fs.String("endpoint", "", "peer endpoint ip:port")
	allowed := fs.String("allowed", "", "peer allowed prefix")
	_ = fs.Parse(os.Args[2:])

	cfg := tunnel.Config{Name: *name, StateDir: *state, ListenPort: *port, MTU: *mtu, Helper: tunnel.SelfHelper(helperCmd), Mode: tunnel.ModeUserspace,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))}
	if *addr != "" {
		p, err := netip.ParsePrefix(*addr)
		if err != nil {
			fail(err)
		}
		cfg.Addresses = []netip.Prefix{p}
	}
	t, err := tunnel.Open(context.Background(), cfg)
	if err != nil {
		fail(err)
	}
	if os.Args[1] == "down" {
		if err := t.Destroy(); err != nil {
			fail(err)
		}
		return
	}
	defer t.Close()
	var peers []tunnel.Peer
	if *peer != "" {
		p := tunnel.Peer{PublicKey: *peer, Endpoint: *endpoint}
		if *allowed != "" {
			pr, err := netip.ParsePrefix(*allowed)
			if err != nil {
				fail(err)
			}
			p.AllowedIPs = []netip.Prefix{pr}
		}
		peers = append(peers, p)
	}
	if err := t.Reconcile(context.Background(), peers); err != nil {
		fail(err)
	}
	fmt.Println(t.PublicKey())
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "weftnode:", err)
	os.Exit(1)
}
