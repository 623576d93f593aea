package tunnel

import (
	"net"
	"net/netip"
	"slices"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// plan is the difference between the device and the desired peers: what
// one ConfigureDevice call and a few route operations must change. An empty
// plan writes nothing.
type plan struct {
	peers     []wgtypes.PeerConfig
	addRoutes []netip.Prefix
	delRoutes []netip.Prefix
	// endpoints records, per peer key, the configured endpoint the plan
	// applies or accepts, so that a later reconcile can tell a roamed
	// endpoint (leave it) from a changed configuration (apply it).
	endpoints map[wgtypes.Key]netip.AddrPort
}

func (p *plan) empty() bool {
	return len(p.peers) == 0 && len(p.addRoutes) == 0 && len(p.delRoutes) == 0
}

// makePlan compares desired peers with the device's peers and the routes
// through the device. lastEndpoint holds the endpoints this process
// configured before; see plan.endpoints.
func makePlan(dev *wgtypes.Device, routes []netip.Prefix, desired []peerSpec, lastEndpoint map[wgtypes.Key]netip.AddrPort) *plan {
	p := &plan{endpoints: map[wgtypes.Key]netip.AddrPort{}}
	current := map[wgtypes.Key]*wgtypes.Peer{}
	for i := range dev.Peers {
		current[dev.Peers[i].PublicKey] = &dev.Peers[i]
	}
	wanted := map[wgtypes.Key]bool{}
	var wantRoutes []netip.Prefix

	entry := func(s peerSpec, key wgtypes.Key, allowed []netip.Prefix) {
		wanted[key] = true
		cur := current[key]
		if cur == nil {
			pc := wgtypes.PeerConfig{
				PublicKey:                   key,
				PersistentKeepaliveInterval: durationPtr(s.keep),
				ReplaceAllowedIPs:           true,
				AllowedIPs:                  toIPNets(allowed),
			}
			if s.endpoint.IsValid() {
				pc.Endpoint = net.UDPAddrFromAddrPort(s.endpoint)
				p.endpoints[key] = s.endpoint
			}
			p.peers = append(p.peers, pc)
			return
		}
		pc := wgtypes.PeerConfig{PublicKey: key, UpdateOnly: true}
		changed := false
		if !slices.Equal(fromIPNets(cur.AllowedIPs), allowed) {
			pc.ReplaceAllowedIPs = true
			pc.AllowedIPs = toIPNets(allowed)
			changed = true
		}
		if cur.PersistentKeepaliveInterval != s.keep {
			pc.PersistentKeepaliveInterval = durationPtr(s.keep)
			changed = true
		}
		if s.endpoint.IsValid() {
			var curEP netip.AddrPort
			if cur.Endpoint != nil {
				curEP = cur.Endpoint.AddrPort()
				curEP = netip.AddrPortFrom(curEP.Addr().Unmap(), curEP.Port())
			}
			last, known := lastEndpoint[key]
			switch {
			case curEP == s.endpoint:
			case !curEP.IsValid():
				// Never reached: configure it.
				pc.Endpoint = net.UDPAddrFromAddrPort(s.endpoint)
				changed = true
			case known && last == s.endpoint:
				// We configured this endpoint and the peer roamed away
				// from it: WireGuard follows the peer, so do we.
			case !known:
				// Attached to a running device (agent restart): its
				// endpoint is live state, possibly roamed; keep it.
			default:
				// The configuration changed since we last applied it.
				pc.Endpoint = net.UDPAddrFromAddrPort(s.endpoint)
				changed = true
			}
			p.endpoints[key] = s.endpoint
		}
		if changed {
			p.peers = append(p.peers, pc)
		}
	}

	for _, s := range desired {
		wantRoutes = append(wantRoutes, s.allowed...)
		if s.next == nil {
			entry(s, s.key, s.allowed)
			continue
		}
		// During a rotation the prefixes belong to whichever key the node
		// handshook with last; the other entry stays, without prefixes, so
		// either key can complete a handshake.
		owner := s.key
		if n, c := current[*s.next], current[s.key]; n != nil && !n.LastHandshakeTime.IsZero() &&
			(c == nil || n.LastHandshakeTime.After(c.LastHandshakeTime)) {
			owner = *s.next
		}
		for _, k := range []wgtypes.Key{s.key, *s.next} {
			if k == owner {
				entry(s, k, s.allowed)
			} else {
				entry(s, k, nil)
			}
		}
	}
	for _, cp := range dev.Peers {
		if !wanted[cp.PublicKey] {
			p.peers = append(p.peers, wgtypes.PeerConfig{PublicKey: cp.PublicKey, Remove: true})
		}
	}

	have := map[netip.Prefix]bool{}
	for _, r := range routes {
		have[r] = true
	}
	want := map[netip.Prefix]bool{}
	for _, r := range wantRoutes {
		want[r] = true
		if !have[r] {
			p.addRoutes = append(p.addRoutes, r)
		}
	}
	for _, r := range routes {
		if !want[r] {
			p.delRoutes = append(p.delRoutes, r)
		}
	}
	slices.SortFunc(p.addRoutes, comparePrefix)
	slices.SortFunc(p.delRoutes, comparePrefix)
	return p
}

func durationPtr(d time.Duration) *time.Duration { return &d }

func toIPNets(ps []netip.Prefix) []net.IPNet {
	out := make([]net.IPNet, 0, len(ps))
	for _, p := range ps {
		out = append(out, net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())})
	}
	return out
}

func fromIPNets(ns []net.IPNet) []netip.Prefix {
	out := make([]netip.Prefix, 0, len(ns))
	for _, n := range ns {
		a, ok := netip.AddrFromSlice(n.IP)
		if !ok {
			continue
		}
		ones, bits := n.Mask.Size()
		if a.Is4In6() && bits == 128 {
			ones -= 96
		}
		out = append(out, netip.PrefixFrom(a.Unmap(), ones).Masked())
	}
	slices.SortFunc(out, comparePrefix)
	return slices.Compact(out)
}
