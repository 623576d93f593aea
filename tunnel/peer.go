package tunnel

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// Peer is one remote node as the tunnel should see it.
type Peer struct {
	// PublicKey is the node's WireGuard public key (base64).
	PublicKey string
	// NextPublicKey is the key the node announced it will rotate to, or
	// empty. The tunnel installs it as a second peer entry so the node's
	// first handshake with its new key is accepted; the allowed prefixes
	// follow whichever of the two entries handshook last (see docs/tunnel.md).
	NextPublicKey string
	// Endpoint is the node's underlay ip:port; empty for a node behind NAT,
	// whose endpoint is learned from its handshakes.
	Endpoint string
	// AllowedIPs are the prefixes the node owns: its CIDRs and mesh IP.
	// Every address belongs to at most one peer.
	AllowedIPs []netip.Prefix
	// Keepalive is the persistent keepalive interval (0 = off). Nodes
	// behind NAT set it towards every peer to keep their mapping open.
	Keepalive time.Duration
}

// ErrInvalidPeer is wrapped by every validation error of Reconcile's input.
var ErrInvalidPeer = errors.New("tunnel: invalid peer")

// maxKeepalive is what the WireGuard protocol can carry (16 bits of seconds).
const maxKeepalive = 65535 * time.Second

// peerSpec is a validated Peer.
type peerSpec struct {
	key      wgtypes.Key
	next     *wgtypes.Key
	endpoint netip.AddrPort // invalid when none
	allowed  []netip.Prefix // sorted, deduplicated
	keep     time.Duration
}

// validatePeers checks the whole desired set before anything is applied, so
// that a bad entry changes nothing. self is the device's own public key.
func validatePeers(desired []Peer, self wgtypes.Key) ([]peerSpec, error) {
	specs := make([]peerSpec, 0, len(desired))
	seen := map[wgtypes.Key]int{}
	type owner struct {
		p   netip.Prefix
		idx int
	}
	var owners []owner
	for i, p := range desired {
		where := fmt.Sprintf("peer %d", i)
		key, err := ParsePublicKey(p.PublicKey)
		if err != nil {
			return nil, fmt.Errorf("%w: %s: public key: %w", ErrInvalidPeer, where, err)
		}
		where = fmt.Sprintf("peer %d (%s)", i, shortKey(key))
		if key == self {
			return nil, fmt.Errorf("%w: %s: this is the device's own public key; a node is not its own peer", ErrInvalidPeer, where)
		}
		if j, dup := seen[key]; dup {
			return nil, fmt.Errorf("%w: %s: same public key as peer %d; list each node once", ErrInvalidPeer, where, j)
		}
		seen[key] = i
		s := peerSpec{key: key, keep: p.Keepalive}
		if p.NextPublicKey != "" {
			nk, err := ParsePublicKey(p.NextPublicKey)
			if err != nil {
				return nil, fmt.Errorf("%w: %s: next public key: %w", ErrInvalidPeer, where, err)
			}
			if nk == key || nk == self {
				return nil, fmt.Errorf("%w: %s: next public key must differ from the current key and from this device's key", ErrInvalidPeer, where)
			}
			if j, dup := seen[nk]; dup {
				return nil, fmt.Errorf("%w: %s: next public key is already used by peer %d", ErrInvalidPeer, where, j)
			}
			seen[nk] = i
			s.next = &nk
		}
		if p.Endpoint != "" {
			ap, err := netip.ParseAddrPort(p.Endpoint)
			if err != nil {
				return nil, fmt.Errorf("%w: %s: endpoint %q is not ip:port (IPv6 as [addr]:port; names must be resolved before): %v", ErrInvalidPeer, where, p.Endpoint, err)
			}
			if ap.Port() == 0 {
				return nil, fmt.Errorf("%w: %s: endpoint %q has port 0", ErrInvalidPeer, where, p.Endpoint)
			}
			a := ap.Addr()
			if a.IsUnspecified() || a.IsMulticast() || (a.Is6() && a.Zone() != "") {
				return nil, fmt.Errorf("%w: %s: endpoint %q is not a unicast address a peer can be reached at", ErrInvalidPeer, where, p.Endpoint)
			}
			s.endpoint = netip.AddrPortFrom(a.Unmap(), ap.Port())
		}
		if p.Keepalive < 0 || p.Keepalive > maxKeepalive || p.Keepalive%time.Second != 0 {
			return nil, fmt.Errorf("%w: %s: keepalive %v must be whole seconds between 0 (off) and %v", ErrInvalidPeer, where, p.Keepalive, maxKeepalive)
		}
		for _, pr := range p.AllowedIPs {
			if !pr.IsValid() {
				return nil, fmt.Errorf("%w: %s: allowed prefix is empty or malformed", ErrInvalidPeer, where)
			}
			if pr.Addr().Is4In6() || pr.Addr().Zone() != "" {
				return nil, fmt.Errorf("%w: %s: allowed prefix %s must be plain IPv4 or IPv6", ErrInvalidPeer, where, pr)
			}
			if pr.Masked() != pr {
				return nil, fmt.Errorf("%w: %s: allowed prefix %s has host bits set; did you mean %s?", ErrInvalidPeer, where, pr, pr.Masked())
			}
			if pr.Bits() == 0 {
				return nil, fmt.Errorf("%w: %s: allowed prefix %s would route everything to one peer; Weft peers own specific prefixes", ErrInvalidPeer, where, pr)
			}
			if slices.Contains(s.allowed, pr) {
				continue
			}
			for _, o := range owners {
				if o.idx != i && o.p.Overlaps(pr) {
					return nil, fmt.Errorf("%w: %s: allowed prefix %s overlaps %s of peer %d (%s): every address must belong to exactly one node; fix the overlapping CIDRs", ErrInvalidPeer, where, pr, o.p, o.idx, shortKey(specs[o.idx].key))
				}
			}
			owners = append(owners, owner{pr, i})
			s.allowed = append(s.allowed, pr)
		}
		slices.SortFunc(s.allowed, comparePrefix)
		specs = append(specs, s)
	}
	return specs, nil
}

func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}

// shortKey abbreviates a key for messages and logs, like `wg show` users
// recognise it.
func shortKey(k wgtypes.Key) string {
	s := k.String()
	return s[:8] + "…"
}

// formatPrefixes is for log lines.
func formatPrefixes(ps []netip.Prefix) string {
	ss := make([]string, len(ps))
	for i, p := range ps {
		ss[i] = p.String()
	}
	return strings.Join(ss, ",")
}

// ValidatePeers checks a desired peer set the way Reconcile does, without a
// device: in-memory devices (tunneltest) refuse exactly what a real one
// refuses. self is the device's own public key.
func ValidatePeers(desired []Peer, self wgtypes.Key) error {
	_, err := validatePeers(desired, self)
	return err
}
