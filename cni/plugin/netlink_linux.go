package plugin

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// NetlinkHost is HostLinks on the plugin's own network namespace.
type NetlinkHost struct{}

// Link implements HostLinks.
func (NetlinkHost) Link(name string) (Link, error) {
	l, err := netlink.LinkByName(name)
	if err != nil {
		if errors.As(err, new(netlink.LinkNotFoundError)) {
			return Link{}, fmt.Errorf("%w: %s", ErrNoLink, name)
		}
		return Link{}, fmt.Errorf("looking up link %s: %w", name, err)
	}
	return Link{Kind: l.Type(), MAC: l.Attrs().HardwareAddr.String()}, nil
}

// NetlinkSandbox is Sandbox on the kernel's namespaces: it reads the pod's
// namespace through a netlink handle opened in it, so the plugin's own
// thread never changes namespace.
type NetlinkSandbox struct{}

// Gone implements Sandbox.
func (NetlinkSandbox) Gone(path, ifName string) (bool, error) {
	if path == "" {
		return true, nil
	}
	if err := ns.IsNSorErr(path); err != nil {
		if errors.As(err, new(ns.NSPathNotExistErr)) || errors.As(err, new(ns.NSPathNotNSErr)) {
			// Missing, or the mount point left once the namespace was
			// unmounted: no pod is in it any more.
			return true, nil
		}
		return false, fmt.Errorf("looking at the pod's namespace %s: %w", path, err)
	}
	h, closeH, err := handleAt(path)
	if err != nil {
		return false, err
	}
	defer closeH()
	if _, err := h.LinkByName(ifName); err != nil {
		if errors.As(err, new(netlink.LinkNotFoundError)) {
			return true, nil
		}
		return false, fmt.Errorf("looking up %s in the pod's namespace %s: %w", ifName, path, err)
	}
	return false, nil
}

// CheckAddress implements Sandbox.
func (NetlinkSandbox) CheckAddress(path, ifName string, addr netip.Addr) error {
	h, closeH, err := handleAt(path)
	if err != nil {
		return err
	}
	defer closeH()
	l, err := h.LinkByName(ifName)
	if err != nil {
		if errors.As(err, new(netlink.LinkNotFoundError)) {
			return fmt.Errorf("the pod's namespace %s has no interface %s", path, ifName)
		}
		return fmt.Errorf("looking up %s in the pod's namespace %s: %w", ifName, path, err)
	}
	if l.Attrs().Flags&net.FlagUp == 0 {
		return fmt.Errorf("%s in the pod's namespace %s is down", ifName, path)
	}
	// A dump interrupted by a concurrent change still lists what was
	// there; the address the check looks for was added at ADD.
	addrs, err := h.AddrList(l, netlink.FAMILY_ALL)
	if errors.Is(err, netlink.ErrDumpInterrupted) {
		err = nil
	}
	if err != nil {
		return fmt.Errorf("listing the addresses of %s in the pod's namespace %s: %w", ifName, path, err)
	}
	var have []string
	for _, a := range addrs {
		if got, ok := netip.AddrFromSlice(a.IP); ok && got.Unmap() == addr {
			return nil
		}
		have = append(have, a.IPNet.String())
	}
	return fmt.Errorf("%s in the pod's namespace %s does not have %s (it has: %s)", ifName, path, addr, strings.Join(have, ", "))
}

func handleAt(path string) (*netlink.Handle, func(), error) {
	nsh, err := netns.GetFromPath(path)
	if err != nil {
		return nil, nil, fmt.Errorf("opening the pod's namespace %s: %w", path, err)
	}
	h, err := netlink.NewHandleAt(nsh)
	if err != nil {
		nsh.Close()
		return nil, nil, fmt.Errorf("opening netlink in the pod's namespace %s: %w", path, err)
	}
	return h, func() { h.Close(); nsh.Close() }, nil
}
