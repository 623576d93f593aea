//go:build !linux

package plugin

import (
	"errors"
	"net/netip"
)

// errLinuxOnly: network namespaces and netlink are Linux's; so is CNI.
var errLinuxOnly = errors.New("weft-cni runs on Linux only")

// NetlinkHost is HostLinks on the plugin's own network namespace (Linux).
type NetlinkHost struct{}

// Link implements HostLinks.
func (NetlinkHost) Link(string) (Link, error) { return Link{}, errLinuxOnly }

// NetlinkSandbox is Sandbox on the kernel's namespaces (Linux).
type NetlinkSandbox struct{}

// Gone implements Sandbox.
func (NetlinkSandbox) Gone(string, string) (bool, error) { return false, errLinuxOnly }

// CheckAddress implements Sandbox.
func (NetlinkSandbox) CheckAddress(string, string, netip.Addr) error { return errLinuxOnly }
