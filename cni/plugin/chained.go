package plugin

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/utils"

	"github.com/weftmesh/weft/agent/api"
)

// HostLinks looks links up in the plugin's own network namespace, which
// the runtime runs it in: the host's.
type HostLinks interface {
	// Link returns the named link; an error wrapping ErrNoLink when there
	// is none.
	Link(name string) (Link, error)
}

// Link is what the plugin needs to know of a host link.
type Link struct {
	// Kind is the link's type as netlink names it: "veth", "bridge"...
	Kind string
	MAC  string
}

// ErrNoLink is a link that does not exist.
var ErrNoLink = errors.New("plugin: no such link")

// ChainedInput finds, in the previous plugin's result, what the agent
// needs to enforce policy on a pod it did not connect: the pod's IPv4
// address and the host end of the pod's veth. A bridge plugin lists the
// bridge (cni0) and the host veth, both without a sandbox: the veth is the
// one whose link is a veth in the host namespace.
func ChainedInput(prev types.Result, ifName string, links HostLinks, after string) (api.CNIChained, error) {
	if after == "" {
		after = "the plugin before it"
	}
	r, err := types100.NewResultFromResult(prev)
	if err != nil {
		return api.CNIChained{}, fmt.Errorf("reading prevResult: %w", err)
	}
	ip, err := podIPv4(r, ifName)
	if err != nil {
		return api.CNIChained{}, fmt.Errorf("weft-cni chained after %s needs a plugin that gives the pod an IPv4 address: %w", after, err)
	}
	host, err := hostVeth(r, links)
	if err != nil {
		return api.CNIChained{}, fmt.Errorf("weft-cni chained after %s needs a veth-based plugin (bridge, ptp) that leaves the host end of the pod's veth in the host namespace: %w", after, err)
	}
	return api.CNIChained{IP: ip, HostIface: host}, nil
}

// podIPv4 is the IPv4 address of the pod's interface (ifName, in a
// sandbox); failing that, of any sandbox interface; failing that, the
// first IPv4 address of an entry that names no interface.
func podIPv4(r *types100.Result, ifName string) (netip.Addr, error) {
	const (
		none = iota
		unattached
		sandbox
		pod
	)
	var best netip.Addr
	rank := none
	var seen []string
	for _, c := range r.IPs {
		if c == nil {
			continue
		}
		a, ok := netip.AddrFromSlice(c.Address.IP)
		if !ok {
			continue
		}
		a = a.Unmap()
		seen = append(seen, a.String())
		if !a.Is4() || a.IsUnspecified() {
			continue
		}
		k := unattached
		if c.Interface != nil {
			i := *c.Interface
			if i < 0 || i >= len(r.Interfaces) || r.Interfaces[i] == nil {
				continue
			}
			switch iface := r.Interfaces[i]; {
			case iface.Sandbox == "":
				continue // an address of the host side (a bridge's gateway)
			case iface.Name == ifName:
				k = pod
			default:
				k = sandbox
			}
		}
		if k > rank {
			best, rank = a, k
		}
	}
	if rank == none {
		if len(seen) == 0 {
			return netip.Addr{}, errors.New("prevResult has no ips")
		}
		return netip.Addr{}, fmt.Errorf("prevResult has no IPv4 address of the pod's interface (ips: %s)", strings.Join(seen, ", "))
	}
	return best, nil
}

// hostVeth is the one interface of r without a sandbox whose link in the
// host namespace is a veth.
func hostVeth(r *types100.Result, links HostLinks) (string, error) {
	var veths, others []string
	for _, iface := range r.Interfaces {
		if iface == nil || iface.Sandbox != "" {
			continue
		}
		if e := utils.ValidateInterfaceName(iface.Name); e != nil {
			return "", fmt.Errorf("prevResult names host interface %q: %s", iface.Name, e.Msg)
		}
		l, err := links.Link(iface.Name)
		switch {
		case errors.Is(err, ErrNoLink):
			others = append(others, iface.Name+" (not in this namespace)")
		case err != nil:
			return "", fmt.Errorf("looking up host interface %s: %w", iface.Name, err)
		case l.Kind == "veth":
			veths = append(veths, iface.Name)
		default:
			others = append(others, iface.Name+" ("+l.Kind+")")
		}
	}
	switch len(veths) {
	case 1:
		return veths[0], nil
	case 0:
		if len(others) == 0 {
			return "", errors.New("prevResult lists no host-side interface (every interface is in the pod's sandbox)")
		}
		return "", fmt.Errorf("no host-side interface of prevResult is a veth: %s", strings.Join(others, ", "))
	default:
		return "", fmt.Errorf("prevResult lists several host-side veths (%s): weft-cni cannot tell which one is the pod's", strings.Join(veths, ", "))
	}
}
