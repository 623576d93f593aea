package lab

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
)

// Cut is a pair of sites between which the routers drop every UDP packet
// (Lab.Cut). A is the site that comes first in the spec.
type Cut struct {
	A string `json:"a"`
	B string `json:"b"`
}

func (c Cut) String() string { return c.A + " <-> " + c.B }

// cutTable is the nftables table of a router's cuts, apart from the NAT
// rules (table weft-lab) so that healing never touches them. Its set holds
// the addresses of the sites this router is cut from: each one's LAN prefix
// (what a public site's nodes send from) and its router's internet address
// (what a NAT site's nodes appear as). The chain matches both directions
// in forward, where a router sees every packet between its LAN and the
// internet: after the de-NAT of a reply, before the masquerade of a request.
//
// A router without cuts has no such table: Cut and Heal rewrite the whole
// table in one nft transaction from the cuts recorded in the state file,
// which is the single truth of what is cut.
const cutTable = "weft-lab-cut"

const cutRules = `add table ip %[1]s
delete table ip %[1]s
table ip %[1]s {
	set cut {
		type ipv4_addr; flags interval;
		elements = { %[2]s }
	}
	chain forward {
		type filter hook forward priority filter - 10; policy accept;
		meta l4proto udp ip saddr @cut counter drop
		meta l4proto udp ip daddr @cut counter drop
	}
}
`

// Cut silently drops all UDP between two sites, in both directions, at
// both sites' routers: nothing answers, as when a path through the
// internet fails or a firewall starts dropping a port. TCP and ICMP still
// pass, so etcd and the control plane stay up and only the data path
// (WireGuard) breaks. The cut is recorded in the lab's state file, so
// `meshctl lab status` shows it and Heal works from another process.
// Cutting a pair that is cut already changes nothing.
func (l *Lab) Cut(ctx context.Context, siteA, siteB string) error {
	pair, err := l.cutPair(siteA, siteB)
	if err != nil {
		return err
	}
	changed, err := l.changeCuts(ctx, func(cuts []Cut) []Cut {
		if slices.Contains(cuts, pair) {
			return nil
		}
		return append(cuts, pair)
	})
	if err != nil {
		return fmt.Errorf("lab %s: cutting %s: %w", l.Name(), pair, err)
	}
	if changed {
		l.log.Info("sites cut: their UDP is dropped", "lab", l.Name(), "sites", pair.String())
	}
	return nil
}

// Heal undoes Cut: UDP between the two sites passes again. Healing a pair
// that is not cut changes nothing.
func (l *Lab) Heal(ctx context.Context, siteA, siteB string) error {
	pair, err := l.cutPair(siteA, siteB)
	if err != nil {
		return err
	}
	changed, err := l.changeCuts(ctx, func(cuts []Cut) []Cut {
		i := slices.Index(cuts, pair)
		if i < 0 {
			return nil
		}
		return slices.Delete(cuts, i, i+1)
	})
	if err != nil {
		return fmt.Errorf("lab %s: healing %s: %w", l.Name(), pair, err)
	}
	if changed {
		l.log.Info("sites healed: their UDP passes again", "lab", l.Name(), "sites", pair.String())
	}
	return nil
}

// HealAll heals every cut of the lab.
func (l *Lab) HealAll(ctx context.Context) error {
	changed, err := l.changeCuts(ctx, func(cuts []Cut) []Cut {
		if len(cuts) == 0 {
			return nil
		}
		return []Cut{}
	})
	if err != nil {
		return fmt.Errorf("lab %s: healing every cut: %w", l.Name(), err)
	}
	if changed {
		l.log.Info("every cut healed", "lab", l.Name())
	}
	return nil
}

// Cuts lists the lab's cuts, as recorded by this or another process.
func (l *Lab) Cuts() []Cut {
	l.state.refresh()
	return l.state.snapshot().Cuts
}

// cutPair checks two site names and orders them as the spec does.
func (l *Lab) cutPair(siteA, siteB string) (Cut, error) {
	ia, err := l.siteIndex(siteA)
	if err != nil {
		return Cut{}, err
	}
	ib, err := l.siteIndex(siteB)
	if err != nil {
		return Cut{}, err
	}
	if ia == ib {
		return Cut{}, fmt.Errorf("lab %s: both sites are %s: a site is never cut from itself (its nodes share a LAN); give two different sites", l.Name(), siteA)
	}
	if ia > ib {
		ia, ib = ib, ia
	}
	return Cut{A: l.routers[ia].Site, B: l.routers[ib].Site}, nil
}

func (l *Lab) siteIndex(name string) (int, error) {
	var sites []string
	for i, r := range l.routers {
		if r.Site == name {
			return i, nil
		}
		sites = append(sites, r.Site)
	}
	hint := ""
	if n := l.Node(name); n != nil {
		hint = fmt.Sprintf(": %s is a node, of site %s", name, n.Site)
	} else if r := l.Router(name); r != nil {
		hint = fmt.Sprintf(": %s is the router of site %s", name, r.Site)
	}
	return 0, fmt.Errorf("%w: lab %s has no site %q%s (sites: %s)", ErrUnknownName, l.Name(), name, hint, strings.Join(sites, ", "))
}

// changeCuts applies fn to the recorded cuts (nil: no change) and makes
// the routers of the sites whose cuts changed drop what the new list says,
// under the lab's lock so that two processes never interleave. The state
// file is written only once every router holds the new rules; if one
// fails, the routers already changed get their old rules back. It reports
// whether anything changed.
func (l *Lab) changeCuts(ctx context.Context, fn func([]Cut) []Cut) (bool, error) {
	changed := false
	err := l.state.change(func(st *stateFile) (bool, error) {
		old := st.Cuts
		cuts := fn(slices.Clone(old))
		if cuts == nil {
			return false, nil
		}
		var touched []*Router
		for _, r := range l.routers {
			if !slices.Equal(cutPeers(old, r.Site), cutPeers(cuts, r.Site)) {
				touched = append(touched, r)
			}
		}
		for i, r := range touched {
			if err := l.applyCuts(ctx, r, cuts); err != nil {
				var undo []error
				for _, done := range touched[:i] {
					if uerr := l.applyCuts(context.WithoutCancel(ctx), done, old); uerr != nil {
						undo = append(undo, uerr)
					}
				}
				if len(undo) > 0 {
					err = errors.Join(err, fmt.Errorf("and restoring the other routers' rules failed, so they may not match `meshctl lab status`; heal again: %w", errors.Join(undo...)))
				}
				return false, err
			}
		}
		if len(cuts) == 0 {
			cuts = nil
		}
		st.Cuts = cuts
		changed = true
		return true, nil
	})
	return changed, err
}

// cutPeers lists the sites cut from site, in spec order of the cuts.
func cutPeers(cuts []Cut, site string) []string {
	var peers []string
	for _, c := range cuts {
		switch site {
		case c.A:
			peers = append(peers, c.B)
		case c.B:
			peers = append(peers, c.A)
		}
	}
	slices.Sort(peers)
	return peers
}

// applyCuts writes router r's cut table for cuts: the addresses of the
// sites cut from r, or no table at all.
func (l *Lab) applyCuts(ctx context.Context, r *Router, cuts []Cut) error {
	var elems []string
	for _, peer := range cutPeers(cuts, r.Site) {
		pr := l.Router(peer)
		if pr == nil {
			return fmt.Errorf("the lab's state file records a cut from %s, which is not one of its sites: remove it from \"cuts\" in %s", peer, l.state.path)
		}
		elems = append(elems, pr.LAN.String(), pr.WANAddr.String())
	}
	script := fmt.Sprintf("add table ip %[1]s\ndelete table ip %[1]s\n", cutTable)
	if len(elems) > 0 {
		script = fmt.Sprintf(cutRules, cutTable, strings.Join(elems, ", "))
	}
	if err := nft(ctx, r.Netns, script); err != nil {
		return fmt.Errorf("router of site %s: %w", r.Site, err)
	}
	return nil
}
