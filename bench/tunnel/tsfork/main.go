// Command tsfork-wg runs Tailscale's wireguard-go fork (the datapath
// tailscaled uses) on a TUN device with a UAPI socket, so `wg` configures
// it exactly like stock wireguard-go. It exists only for the tunnel
// benchmark, which is why it is its own module: Weft itself does not
// depend on Tailscale.
//
// Usage: tsfork-wg INTERFACE (foreground; SIGTERM stops it).
package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/tailscale/wireguard-go/conn"
	"github.com/tailscale/wireguard-go/device"
	"github.com/tailscale/wireguard-go/ipc"
	"github.com/tailscale/wireguard-go/tun"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: tsfork-wg INTERFACE")
		os.Exit(2)
	}
	name := os.Args[1]
	tdev, err := tun.CreateTUN(name, device.DefaultMTU)
	if err != nil {
		fail(err)
	}
	uapiFile, err := ipc.UAPIOpen(name)
	if err != nil {
		fail(err)
	}
	dev := device.NewDevice(tdev, conn.NewDefaultBind(), device.NewLogger(device.LogLevelError, name+": "))
	uapi, err := ipc.UAPIListen(name, uapiFile)
	if err != nil {
		fail(err)
	}
	go func() {
		for {
			c, err := uapi.Accept()
			if err != nil {
				return
			}
			go dev.IpcHandle(c)
		}
	}()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, os.Interrupt)
	select {
	case <-sig:
	case <-dev.Wait():
	}
	uapi.Close()
	dev.Close()
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "tsfork-wg:", err)
	os.Exit(1)
}
