package agent

import (
	"fmt"
	"net"
	"os"
	"path/filepath"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// kernelVeths is the vethPlumber of a real node: named network namespaces
// under /var/run/netns, veth pairs through netlink.
type kernelVeths struct{}

func (kernelVeths) NetnsExists(name string) bool {
	_, err := os.Stat(netnsPath(name))
	return err == nil
}

func (kernelVeths) Plumb(w *workload, mtu int) error { return plumbVeth(w, mtu) }

func (kernelVeths) Unplumb(w *workload) error {
	if w.Chained {
		return nil // the previous plugin in the chain removes its veth
	}
	l, err := netlink.LinkByName(w.HostIface)
	if err != nil {
		return nil // already gone: deleting the namespace removes the veth
	}
	if err := netlink.LinkDel(l); err != nil {
		return fmt.Errorf("removing %s: %w", w.HostIface, err)
	}
	return nil
}

// netnsPath is the file of a named namespace; a pod's namespace is given
// as a path already.
func netnsPath(name string) string {
	if filepath.IsAbs(name) {
		return name
	}
	return filepath.Join("/var/run/netns", name)
}

// plumbVeth creates the veth pair (if missing) and configures both ends.
// The agent runs in the node's network namespace; the workload end is
// created directly inside the workload's namespace.
func plumbVeth(w *workload, mtu int) error {
	ns, err := netns.GetFromPath(netnsPath(w.Netns))
	if err != nil {
		return fmt.Errorf("opening namespace: %w", err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return err
	}
	defer h.Close()

	host, err := netlink.LinkByName(w.HostIface)
	if err != nil {
		if old, lerr := h.LinkByName(w.ifName()); lerr == nil {
			_ = h.LinkDel(old) // a half-made pair from an interrupted run
		}
		veth := &netlink.Veth{
			LinkAttrs:     netlink.LinkAttrs{Name: w.HostIface, MTU: mtu},
			PeerName:      w.ifName(),
			PeerNamespace: netlink.NsFd(int(ns)),
		}
		if err := netlink.LinkAdd(veth); err != nil {
			return fmt.Errorf("creating veth %s: %w", w.HostIface, err)
		}
		if host, err = netlink.LinkByName(w.HostIface); err != nil {
			return err
		}
	}
	peer, err := h.LinkByName(w.ifName())
	if err != nil {
		return fmt.Errorf("workload end %s missing in %s: %w", w.ifName(), w.Netns, err)
	}
	if err := netlink.LinkSetUp(host); err != nil {
		return err
	}
	if lo, err := h.LinkByName("lo"); err == nil {
		_ = h.LinkSetUp(lo)
	}
	if err := h.LinkSetUp(peer); err != nil {
		return err
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: w.IP.AsSlice(), Mask: net.CIDRMask(w.IP.BitLen(), w.IP.BitLen())}}
	if err := h.AddrReplace(peer, addr); err != nil {
		return fmt.Errorf("addressing %s: %w", w.Netns, err)
	}
	gw := net.ParseIP(gatewayIP)
	if err := h.NeighSet(&netlink.Neigh{LinkIndex: peer.Attrs().Index, State: netlink.NUD_PERMANENT, IP: gw, HardwareAddr: host.Attrs().HardwareAddr}); err != nil {
		return fmt.Errorf("gateway neighbour in %s: %w", w.Netns, err)
	}
	if err := h.RouteReplace(&netlink.Route{LinkIndex: peer.Attrs().Index, Dst: &net.IPNet{IP: gw, Mask: net.CIDRMask(32, 32)}, Scope: netlink.SCOPE_LINK}); err != nil {
		return fmt.Errorf("gateway route in %s: %w", w.Netns, err)
	}
	if err := h.RouteReplace(&netlink.Route{LinkIndex: peer.Attrs().Index, Dst: &net.IPNet{IP: net.IPv4zero, Mask: net.CIDRMask(0, 32)}, Gw: gw}); err != nil {
		return fmt.Errorf("default route in %s: %w", w.Netns, err)
	}
	if err := netlink.NeighSet(&netlink.Neigh{LinkIndex: host.Attrs().Index, State: netlink.NUD_PERMANENT, IP: w.IP.AsSlice(), HardwareAddr: peer.Attrs().HardwareAddr}); err != nil {
		return fmt.Errorf("workload neighbour: %w", err)
	}
	route := &netlink.Route{LinkIndex: host.Attrs().Index, Dst: addr.IPNet, Scope: netlink.SCOPE_LINK}
	if w.routeSrc.IsValid() {
		route.Src = w.routeSrc.AsSlice()
	}
	if err := netlink.RouteReplace(route); err != nil {
		return fmt.Errorf("route to workload: %w", err)
	}
	return nil
}

// linkMACIn is the MAC of interface ifName inside the namespace (a name
// under /var/run/netns or a path).
func linkMACIn(ns, ifName string) (string, error) {
	h, err := netns.GetFromPath(netnsPath(ns))
	if err != nil {
		return "", err
	}
	defer h.Close()
	nh, err := netlink.NewHandleAt(h)
	if err != nil {
		return "", err
	}
	defer nh.Close()
	l, err := nh.LinkByName(ifName)
	if err != nil {
		return "", err
	}
	return l.Attrs().HardwareAddr.String(), nil
}
