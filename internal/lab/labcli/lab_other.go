//go:build !linux

package labcli

import (
	"fmt"
	"runtime"

	"github.com/urfave/cli/v2"
)

// errLab is every lab command's answer here: the lab is network
// namespaces, veths and nftables, which only Linux has.
func errLab(cmd string) error {
	return fmt.Errorf("meshctl lab %s builds network namespaces, which %s does not have: run it on a Linux machine or VM as root (for example ssh -t HOST sudo meshctl lab %s ...)", cmd, runtime.GOOS, cmd)
}

func labUp(*cli.Context) error     { return errLab("up") }
func labStatus(*cli.Context) error { return errLab("status") }
func labExec(*cli.Context) error   { return errLab("exec") }
func labDown(*cli.Context) error   { return errLab("down") }
func labCut(*cli.Context) error    { return errLab("cut") }
func labHeal(*cli.Context) error   { return errLab("heal") }
