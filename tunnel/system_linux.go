package tunnel

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/weftmesh/weft/internal/peercred"
)

// wgClient is the part of wgctrl the tunnel uses; tests wrap it to count
// writes.
type wgClient interface {
	Device(name string) (*wgtypes.Device, error)
	ConfigureDevice(name string, cfg wgtypes.Config) error
}

// routeTable holds the routes through the device that the tunnel owns.
type routeTable interface {
	List() ([]netip.Prefix, error)
	Add(netip.Prefix) error
	Del(netip.Prefix) error
}

// routeProtocol marks the routes the tunnel installs (`ip route` shows
// "proto 87"), so routes someone else put on the device are not touched.
const routeProtocol netlink.RouteProtocol = 87

// uapiDir is where userspace WireGuard listens; wgctrl and `wg` look there.
const uapiDir = "/var/run/wireguard"

// system is the kernel side of one device: netlink and wgctrl handles bound
// to the device's network namespace.
type system struct {
	netnsPath string
	nl        *netlink.Handle
	wg        *wgctrl.Client
}

func openSystem(netnsPath string) (*system, error) {
	s := &system{netnsPath: netnsPath}
	var err error
	if netnsPath == "" {
		s.nl, err = netlink.NewHandle()
	} else {
		var ns netns.NsHandle
		ns, err = netns.GetFromPath(netnsPath)
		if err != nil {
			return nil, fmt.Errorf("%w: network namespace %s: %w", ErrBadConfig, netnsPath, err)
		}
		s.nl, err = netlink.NewHandleAt(ns)
		ns.Close()
	}
	if err != nil {
		return nil, fmt.Errorf("opening netlink: %w", err)
	}
	// wgctrl's generic netlink socket (kernel WireGuard) belongs to the
	// namespace it is created in.
	err = s.inNetns(func() error {
		var err error
		s.wg, err = wgctrl.New()
		return err
	})
	if err != nil {
		s.nl.Close()
		return nil, fmt.Errorf("opening wgctrl: %w", err)
	}
	return s, nil
}

func (s *system) close() {
	if s.nl != nil {
		s.nl.Close()
		s.nl = nil
	}
	if s.wg != nil {
		s.wg.Close()
		s.wg = nil
	}
}

// inNetns runs fn on a thread in the device's namespace. Processes started
// by fn inherit that namespace.
func (s *system) inNetns(fn func() error) error {
	if s.netnsPath == "" {
		return fn()
	}
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("reading current network namespace: %w", err)
	}
	defer orig.Close()
	target, err := netns.GetFromPath(s.netnsPath)
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("%w: network namespace %s: %w", ErrBadConfig, s.netnsPath, err)
	}
	defer target.Close()
	if err := netns.Set(target); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("entering network namespace %s: %w", s.netnsPath, err)
	}
	ferr := fn()
	if err := netns.Set(orig); err != nil {
		// Leave the thread locked: the runtime discards it when the
		// goroutine ends instead of reusing a thread in the wrong namespace.
		return errors.Join(ferr, fmt.Errorf("leaving network namespace %s: %w", s.netnsPath, err))
	}
	runtime.UnlockOSThread()
	return ferr
}

func (s *system) netnsInode() (uint64, error) {
	p := s.netnsPath
	if p == "" {
		p = "/proc/self/ns/net"
	}
	var st unix.Stat_t
	if err := unix.Stat(p, &st); err != nil {
		return 0, err
	}
	return st.Ino, nil
}

func (s *system) defaultRouteMTU() int {
	routes, err := s.nl.RouteList(nil, netlink.FAMILY_V4)
	if err == nil {
		for _, r := range routes {
			if r.Dst == nil || r.Dst.IP.IsUnspecified() {
				if l, err := s.nl.LinkByIndex(r.LinkIndex); err == nil && l.Attrs().MTU > 0 {
					return l.Attrs().MTU
				}
			}
		}
	}
	return 1500
}

// ensureLink finds or creates the device. An existing device is adopted:
// that is how a restarted agent re-attaches to the userspace helper that
// kept carrying traffic while it was away.
func (s *system) ensureLink(ctx context.Context, cfg Config, mtu int, log *slog.Logger) (Kind, *helperProc, error) {
	name := cfg.Name
	link, err := s.nl.LinkByName(name)
	if err == nil {
		switch link.Type() {
		case "wireguard":
			if cfg.Mode == ModeUserspace {
				return "", nil, fmt.Errorf("%w: %s is a kernel WireGuard device but userspace mode was asked for; delete it (ip link del %s) or use auto mode", ErrBadConfig, name, name)
			}
			log.Info("attached to existing kernel WireGuard device")
			return KindKernel, nil, nil
		case "tuntap":
			pid, err := uapiPeerPID(name)
			if err != nil {
				return "", nil, fmt.Errorf("%s exists as a TUN device but no userspace WireGuard answers on %s: %w; delete it (ip link del %s) and start again", name, uapiPath(name), err, name)
			}
			if err := s.sameNetns(pid); err != nil {
				return "", nil, fmt.Errorf("%s: %w", name, err)
			}
			log.Info("attached to running userspace WireGuard device", "helper_pid", pid)
			return KindUserspace, &helperProc{pid: pid}, nil
		default:
			return "", nil, fmt.Errorf("%w: interface %s already exists and is a %s device, not WireGuard; choose another name", ErrBadConfig, name, link.Type())
		}
	}
	var nf netlink.LinkNotFoundError
	if !errors.As(err, &nf) {
		return "", nil, fmt.Errorf("looking up interface %s: %w", name, err)
	}
	if pid, err := uapiPeerPID(name); err == nil {
		return "", nil, fmt.Errorf("%w: a userspace WireGuard device named %s runs in another network namespace (pid %d); UAPI sockets are shared by all namespaces, so give each node's device its own name", ErrBadConfig, name, pid)
	}
	if cfg.Mode != ModeUserspace {
		err := s.nl.LinkAdd(&netlink.Wireguard{LinkAttrs: netlink.LinkAttrs{Name: name, MTU: mtu}})
		if err == nil {
			log.Info("using kernel WireGuard")
			return KindKernel, nil, nil
		}
		if cfg.Mode == ModeKernel {
			return "", nil, fmt.Errorf("%w: creating kernel WireGuard device %s: %v (is the wireguard module available?)", ErrNotSupported, name, err)
		}
		log.Info("kernel WireGuard not available; using userspace WireGuard", "reason", err.Error())
	}
	h, err := s.startHelper(ctx, cfg, mtu)
	if err != nil {
		return "", nil, err
	}
	log.Info("started userspace WireGuard helper", "helper_pid", h.pid)
	return KindUserspace, h, nil
}

// sameNetns refuses to adopt a helper serving a same-named device in
// another namespace.
func (s *system) sameNetns(pid int) error {
	want, err := s.netnsInode()
	if err != nil {
		return err
	}
	var st unix.Stat_t
	if err := unix.Stat(fmt.Sprintf("/proc/%d/ns/net", pid), &st); err != nil {
		return fmt.Errorf("inspecting helper pid %d: %w", pid, err)
	}
	if st.Ino != want {
		return fmt.Errorf("%w: the userspace WireGuard process (pid %d) answering for this name lives in another network namespace; give each node's device its own name", ErrBadConfig, pid)
	}
	return nil
}

func uapiPath(name string) string { return filepath.Join(uapiDir, name+".sock") }

// uapiPeerPID connects to the device's UAPI socket and returns the pid of
// the process serving it.
func uapiPeerPID(name string) (int, error) { return peercred.PID(uapiPath(name), time.Second) }

// configureLink sets MTU, addresses and the up flag, touching only what
// differs.
func (s *system) configureLink(name string, mtu int, addrs []netip.Prefix) error {
	link, err := s.nl.LinkByName(name)
	if err != nil {
		return fmt.Errorf("looking up %s: %w", name, err)
	}
	if link.Attrs().MTU != mtu {
		if err := s.nl.LinkSetMTU(link, mtu); err != nil {
			return fmt.Errorf("setting MTU %d on %s: %w", mtu, name, err)
		}
	}
	have, err := s.nl.AddrList(link, netlink.FAMILY_ALL)
	if err != nil {
		return fmt.Errorf("listing addresses of %s: %w", name, err)
	}
	want := map[netip.Prefix]bool{}
	for _, a := range addrs {
		want[a] = true
	}
	got := map[netip.Prefix]bool{}
	for _, a := range have {
		p, ok := ipNetPrefix(a.IPNet)
		if !ok || p.Addr().IsLinkLocalUnicast() {
			continue
		}
		got[p] = true
		if !want[p] {
			if err := s.nl.AddrDel(link, &a); err != nil {
				return fmt.Errorf("removing address %s from %s: %w", p, name, err)
			}
		}
	}
	for _, a := range addrs {
		if got[a] {
			continue
		}
		if err := s.nl.AddrAdd(link, &netlink.Addr{IPNet: &net.IPNet{IP: a.Addr().AsSlice(), Mask: net.CIDRMask(a.Bits(), a.Addr().BitLen())}}); err != nil {
			return fmt.Errorf("adding address %s to %s: %w", a, name, err)
		}
	}
	if link.Attrs().Flags&net.FlagUp == 0 {
		if err := s.nl.LinkSetUp(link); err != nil {
			return fmt.Errorf("setting %s up: %w", name, err)
		}
	}
	return nil
}

func ipNetPrefix(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	a = a.Unmap()
	ones, bits := n.Mask.Size()
	if a.Is4() && bits == 128 {
		ones -= 96
	}
	return netip.PrefixFrom(a, ones), true
}

func (s *system) routes(name string, addrs []netip.Prefix) routeTable {
	return &netlinkRoutes{s: s, name: name, addrs: addrs}
}

// netlinkRoutes installs one route per allowed prefix through the device,
// with the node's own mesh address as the preferred source.
type netlinkRoutes struct {
	s     *system
	name  string
	addrs []netip.Prefix
}

func (r *netlinkRoutes) link() (netlink.Link, error) {
	return r.s.nl.LinkByName(r.name)
}

func (r *netlinkRoutes) List() ([]netip.Prefix, error) {
	link, err := r.link()
	if err != nil {
		return nil, err
	}
	rs, err := r.s.nl.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{LinkIndex: link.Attrs().Index, Table: unix.RT_TABLE_MAIN},
		netlink.RT_FILTER_OIF|netlink.RT_FILTER_TABLE)
	if err != nil {
		return nil, err
	}
	var out []netip.Prefix
	for _, rt := range rs {
		if rt.Protocol != routeProtocol {
			continue
		}
		if p, ok := ipNetPrefix(rt.Dst); ok {
			out = append(out, p)
		}
	}
	return out, nil
}

func (r *netlinkRoutes) route(p netip.Prefix) (*netlink.Route, error) {
	link, err := r.link()
	if err != nil {
		return nil, err
	}
	rt := &netlink.Route{
		LinkIndex: link.Attrs().Index,
		Dst:       &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())},
		Scope:     netlink.SCOPE_LINK,
		Protocol:  routeProtocol,
		Table:     unix.RT_TABLE_MAIN,
	}
	for _, a := range r.addrs {
		if a.Addr().Is4() == p.Addr().Is4() {
			rt.Src = a.Addr().AsSlice()
			break
		}
	}
	return rt, nil
}

func (r *netlinkRoutes) Add(p netip.Prefix) error {
	rt, err := r.route(p)
	if err != nil {
		return err
	}
	return r.s.nl.RouteReplace(rt)
}

func (r *netlinkRoutes) Del(p netip.Prefix) error {
	rt, err := r.route(p)
	if err != nil {
		return err
	}
	err = r.s.nl.RouteDel(rt)
	if errors.Is(err, unix.ESRCH) {
		return nil
	}
	return err
}

// removeLink deletes the device: for userspace, by stopping its helper,
// which removes the TUN device and the UAPI socket.
func (s *system) removeLink(name string, kind Kind, h *helperProc) error {
	if kind == KindKernel {
		link, err := s.nl.LinkByName(name)
		if err != nil {
			return nil
		}
		return s.nl.LinkDel(link)
	}
	if h == nil || h.pid == 0 {
		return nil
	}
	if err := h.stop(5 * time.Second); err != nil {
		return fmt.Errorf("stopping userspace WireGuard helper of %s: %w", name, err)
	}
	return nil
}

// isGone says a wgctrl error means the device does not exist (any more):
// no socket, or a socket nobody listens on (helper killed).
func isGone(err error) bool {
	return errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ENOENT) ||
		strings.Contains(err.Error(), "connection refused")
}
