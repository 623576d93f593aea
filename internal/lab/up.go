package lab

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// Up builds the lab described by spec and returns it running. The calling
// process owns the lab until it calls Detach: DownAll in another process
// leaves an owned lab alone while its owner runs. On error Up removes
// whatever it made. log receives progress lines (nil: none).
func Up(ctx context.Context, spec *Spec, log *slog.Logger) (*Lab, error) {
	if err := spec.Validate(); err != nil {
		return nil, err
	}
	for _, tool := range []string{"ip", "nsenter", "nft"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Errorf("lab: the %s command is needed (install iproute2, util-linux and nftables, or run scripts/install-deps.sh): %w", tool, err)
		}
	}
	spec = spec.clone()
	l := layout(spec, log)
	begin := time.Now()

	st, err := createState(spec, l.Namespaces())
	if err != nil {
		return nil, err
	}
	// Namespaces with this lab's prefix but no state file are leftovers
	// (the state file was removed by hand): refuse rather than adopt them.
	if left, err := listNetns(l.prefix()); err != nil || len(left) > 0 {
		_ = st.remove(spec.Name)
		if err != nil {
			return nil, err
		}
		return nil, fmt.Errorf("%w: namespaces of an earlier lab %s are still there (%s): remove them with `meshctl lab down --all --yes`", ErrExists, spec.Name, strings.Join(left, ", "))
	}
	l.state = st
	if err := l.build(ctx); err != nil {
		err = fmt.Errorf("bringing up lab %s: %w", spec.Name, err)
		if derr := l.Down(); derr != nil {
			err = errors.Join(err, fmt.Errorf("and removing what was made: %w", derr))
		}
		return nil, err
	}
	if err := st.update(func(s *stateFile) { s.Complete = true }); err != nil {
		_ = l.Down()
		return nil, err
	}
	l.log.Info("lab is up", "lab", spec.Name, "sites", len(l.routers), "nodes", len(l.nodes),
		"workloads", len(l.workloads), "took", time.Since(begin).Round(time.Millisecond))
	return l, nil
}

func (l *Lab) prefix() string { return nsPrefix + l.Name() + "-" }

func (s *Spec) clone() *Spec {
	c := &Spec{Name: s.Name}
	for _, site := range s.Sites {
		kind := site.Kind()
		cs := SiteSpec{Name: site.Name, NATKind: kind, NAT: kind != NATNone}
		for _, n := range site.Nodes {
			cn := NodeSpec{Name: n.Name, Workloads: append([]WorkloadSpec(nil), n.Workloads...)}
			cs.Nodes = append(cs.Nodes, cn)
		}
		c.Sites = append(c.Sites, cs)
	}
	return c
}

// nsHandle is an open namespace and a netlink socket inside it: links,
// addresses and routes are configured through the socket, so the calling
// thread never changes namespace for them.
type nsHandle struct {
	name string
	ns   netns.NsHandle
	nl   *netlink.Handle
}

func (h *nsHandle) close() {
	if h.nl != nil {
		h.nl.Close()
	}
	h.ns.Close()
}

func openNs(name string) (*nsHandle, error) {
	ns, err := netns.GetFromPath(NetnsPath(name))
	if err != nil {
		return nil, fmt.Errorf("opening namespace %s: %w", name, err)
	}
	nl, err := netlink.NewHandleAt(ns)
	if err != nil {
		ns.Close()
		return nil, fmt.Errorf("netlink in namespace %s: %w", name, err)
	}
	return &nsHandle{name: name, ns: ns, nl: nl}, nil
}

func (l *Lab) build(ctx context.Context) error {
	l.log.Info("creating namespaces", "lab", l.Name(), "count", len(l.netns))
	if err := createNetns(l.netns); err != nil {
		return err
	}
	handles := map[string]*nsHandle{}
	defer func() {
		for _, h := range handles {
			h.close()
		}
	}()
	for _, name := range l.netns {
		h, err := openNs(name)
		if err != nil {
			return err
		}
		handles[name] = h
		if err := h.linkUp("lo"); err != nil {
			return err
		}
	}

	// Forwarding first: per-interface settings copy "default" when the
	// interfaces are created below. Redirects are off because routers
	// forward back out of the bridge they received on.
	routing := []string{"ipv4/ip_forward", "1", "ipv6/conf/all/forwarding", "1",
		"ipv4/conf/all/send_redirects", "0", "ipv4/conf/default/send_redirects", "0"}
	for _, ns := range append([]string{l.internet}, l.routerNetns()...) {
		if err := sysctls(ns, routing...); err != nil {
			return err
		}
	}
	for _, n := range l.nodes {
		if err := sysctls(n.Netns, "ipv4/ip_forward", "1", "ipv6/conf/all/forwarding", "1"); err != nil {
			return err
		}
	}

	inet := handles[l.internet]
	if err := inet.bridge(bridgeIface, netip.PrefixFrom(internetAddr, internetPrefix.Bits())); err != nil {
		return err
	}
	for i, r := range l.routers {
		if err := ctx.Err(); err != nil {
			return err
		}
		rh := handles[r.Netns]
		if err := rh.bridge(bridgeIface, netip.PrefixFrom(r.LANAddr, r.LAN.Bits())); err != nil {
			return err
		}
		if err := veth(rh, wanIface, inet, fmt.Sprintf("r%d", i), bridgeIface); err != nil {
			return err
		}
		if err := rh.addr(wanIface, netip.PrefixFrom(r.WANAddr, internetPrefix.Bits())); err != nil {
			return err
		}
		if err := rh.defaultRoute(wanIface, internetAddr); err != nil {
			return err
		}
		if !r.NAT {
			// Only public LANs are routed from the internet: a NAT'd LAN
			// has no route in, as behind a real NAT.
			if err := inet.route(bridgeIface, r.LAN, r.WANAddr); err != nil {
				return err
			}
		}
		nodes := 0
		for _, n := range l.nodes {
			if n.Site != r.Site {
				continue
			}
			nodes++
			nh := handles[n.Netns]
			if err := veth(nh, n.Iface, rh, n.routerPort, bridgeIface); err != nil {
				return err
			}
			if err := nh.addr(n.Iface, netip.PrefixFrom(n.Underlay, r.LAN.Bits())); err != nil {
				return err
			}
			if err := nh.defaultRoute(n.Iface, n.Gateway); err != nil {
				return err
			}
			for _, w := range l.workloads {
				if w.Node != n.Name {
					continue
				}
				if err := veth(handles[w.Netns], w.Iface, nh, w.HostIface, ""); err != nil {
					return err
				}
			}
		}
		if r.NAT {
			if err := l.masquerade(ctx, r); err != nil {
				return err
			}
		}
		l.log.Info("site ready", "site", r.Site, "lan", r.LAN, "router", r.WANAddr, "nodes", nodes, "nat", r.NATKind)
	}
	return nil
}

func (l *Lab) routerNetns() []string {
	var names []string
	for _, r := range l.routers {
		names = append(names, r.Netns)
	}
	return names
}

// natRules make a site router a NAT as a home or cloud router is one: it
// masquerades the LAN behind the router's internet address (%[3]s is
// "masquerade" for NATEIM, "masquerade random" for NATSymmetric) and drops
// anything from the internet that is not a reply, both what would be
// forwarded into the LAN (so a NAT'd node is unreachable even for a peer
// that routes the LAN prefix to the router) and what is addressed to the
// router itself.
//
// The input chain is what lets two NATs meet when they punch holes. A
// hole-punching packet that reaches this router before the node behind it
// has sent its own would, if accepted, be answered by the router's own
// stack (an ICMP port unreachable) and leave a confirmed conntrack entry
// for routerIP:port <- peer. When the node then sends to that peer, the
// masquerade finds its usual external port taken by that entry and picks
// another one, so the peer keeps aiming at a port nobody listens on and
// the two NATs never meet. A packet dropped in the input chain is dropped
// before its conntrack entry is confirmed, so it leaves nothing behind.
// ICMP errors about a flow the router knows are "related" and pass.
const natRules = `table ip weft-lab {
	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		oifname "%[1]s" ip saddr %[2]s %[3]s
	}
	chain forward {
		type filter hook forward priority filter; policy accept;
		iifname "%[1]s" ct state established,related accept
		iifname "%[1]s" drop
	}
	chain input {
		type filter hook input priority filter; policy accept;
		iifname "%[1]s" ct state established,related accept
		iifname "%[1]s" drop
	}
}
`

// masqueradeStatement is the nft statement of a NAT kind.
func masqueradeStatement(kind NATKind) (string, error) {
	switch kind {
	case NATEIM:
		return "masquerade", nil
	case NATSymmetric:
		// A random port for every new connection (conntrack entry), even
		// from a socket that already has a mapping: per destination.
		return "masquerade random", nil
	}
	return "", fmt.Errorf("lab: no NAT rules for NAT kind %q", kind)
}

func (l *Lab) masquerade(ctx context.Context, r *Router) error {
	stmt, err := masqueradeStatement(r.NATKind)
	if err != nil {
		return err
	}
	if err := nft(ctx, r.Netns, fmt.Sprintf(natRules, wanIface, r.LAN, stmt)); err != nil {
		return fmt.Errorf("installing the NAT rules: %w", err)
	}
	return nil
}

// nft runs an nft script (one transaction: all of it or nothing) inside a
// namespace.
func nft(ctx context.Context, ns, script string) error {
	cmd := exec.CommandContext(ctx, "nsenter", nsenterArgs(ns, []string{"nft", "-f", "-"})...)
	cmd.Stdin = strings.NewReader(script)
	cmd.SysProcAttr = diesWithUs()
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("nft in %s: %w: %s", ns, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// veth creates a veth pair with one end (name) in a and the other (peer)
// born directly in b, so no end ever appears in the root namespace. Both
// ends are brought up; the peer joins bridge in b unless bridge is "".
func veth(a *nsHandle, name string, b *nsHandle, peer, bridge string) error {
	link := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: name},
		PeerName:      peer,
		PeerNamespace: netlink.NsFd(int(b.ns)),
	}
	if err := a.nl.LinkAdd(link); err != nil {
		return fmt.Errorf("creating veth %s (%s) <-> %s (%s): %w", name, a.name, peer, b.name, err)
	}
	if bridge != "" {
		if err := b.master(peer, bridge); err != nil {
			return err
		}
	}
	if err := b.linkUp(peer); err != nil {
		return err
	}
	return a.linkUp(name)
}

func (h *nsHandle) link(name string) (netlink.Link, error) {
	link, err := h.nl.LinkByName(name)
	if err != nil {
		return nil, fmt.Errorf("finding %s in %s: %w", name, h.name, err)
	}
	return link, nil
}

func (h *nsHandle) linkUp(name string) error {
	link, err := h.link(name)
	if err != nil {
		return err
	}
	if err := h.nl.LinkSetUp(link); err != nil {
		return fmt.Errorf("setting %s up in %s: %w", name, h.name, err)
	}
	return nil
}

func (h *nsHandle) master(port, bridge string) error {
	p, err := h.link(port)
	if err != nil {
		return err
	}
	br, err := h.link(bridge)
	if err != nil {
		return err
	}
	if err := h.nl.LinkSetMaster(p, br); err != nil {
		return fmt.Errorf("adding %s to %s in %s: %w", port, bridge, h.name, err)
	}
	return nil
}

func (h *nsHandle) bridge(name string, addr netip.Prefix) error {
	if err := h.nl.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}); err != nil {
		return fmt.Errorf("creating bridge %s in %s: %w", name, h.name, err)
	}
	if err := h.addr(name, addr); err != nil {
		return err
	}
	return h.linkUp(name)
}

func (h *nsHandle) addr(iface string, p netip.Prefix) error {
	link, err := h.link(iface)
	if err != nil {
		return err
	}
	a := &netlink.Addr{IPNet: prefixNet(p)}
	if err := h.nl.AddrAdd(link, a); err != nil {
		return fmt.Errorf("adding %s to %s in %s: %w", p, iface, h.name, err)
	}
	return nil
}

func (h *nsHandle) defaultRoute(iface string, gw netip.Addr) error {
	return h.route(iface, netip.Prefix{}, gw)
}

// route adds dst via gw on iface; an invalid dst is the default route.
func (h *nsHandle) route(iface string, dst netip.Prefix, gw netip.Addr) error {
	link, err := h.link(iface)
	if err != nil {
		return err
	}
	r := &netlink.Route{LinkIndex: link.Attrs().Index, Gw: net.IP(gw.AsSlice())}
	what := "default"
	if dst.IsValid() {
		r.Dst = &net.IPNet{IP: dst.Addr().AsSlice(), Mask: net.CIDRMask(dst.Bits(), dst.Addr().BitLen())}
		what = dst.String()
	}
	if err := h.nl.RouteAdd(r); err != nil {
		return fmt.Errorf("adding route %s via %s in %s: %w", what, gw, h.name, err)
	}
	return nil
}

func prefixNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}
