package agent

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"

	"github.com/weftmesh/weft/identity"
)

// workloadLabels are the user's labels plus the cluster label every
// endpoint carries. Users cannot set mesh: labels themselves: those are
// facts the mesh vouches for.
func (a *Agent) workloadLabels(m map[string]string) (identity.Labels, error) {
	l, err := identity.ParseUserLabelMap(m)
	if err != nil {
		return nil, err
	}
	return l.With(identity.Label{Source: identity.SourceMesh, Key: "cluster", Value: a.cfg.Cluster})
}

// hostLabels are the node's own endpoint labels: a VM is a workload like
// any other, marked mesh:kind=vm.
func (a *Agent) hostLabels() (identity.Labels, error) {
	l, err := a.workloadLabels(a.cfg.Labels)
	if err != nil {
		return nil, fmt.Errorf("labels: %w", err)
	}
	return l.With(identity.Label{Source: identity.SourceMesh, Key: "kind", Value: "vm"})
}

// registerHost gives the node's mesh IP the identity of its labels and
// makes it a local endpoint judged on the tunnel device.
func (a *Agent) registerHost(ctx context.Context) error {
	if a.cfg.Kubernetes.Enabled {
		// A Kubernetes node's own address is infrastructure, not a
		// workload: host here, remote-node elsewhere.
		_, err := a.eps.add(ctx, endpointSpec{Name: a.cfg.NodeName, ID: endpointID(a.cidr, a.meshIP), IP: a.meshIP, Host: true, Infra: true}, nil)
		return err
	}
	labels, err := a.hostLabels()
	if err != nil {
		return err
	}
	id, err := a.eps.add(ctx, endpointSpec{Name: a.cfg.NodeName, ID: endpointID(a.cidr, a.meshIP), IP: a.meshIP, Labels: labels, Host: true}, nil)
	if err != nil {
		return err
	}
	if a.hostIdent != 0 && a.hostIdent != id {
		_ = a.alloc.Release(ctx, a.hostIdent)
	}
	a.hostIdent = id
	return nil
}

// underlayEndpoints are the addresses peers reach this node at: the
// configured ones, or the address of the interface holding the default
// route with the tunnel's port.
func (a *Agent) underlayEndpoints() ([]netip.AddrPort, error) {
	var out []netip.AddrPort
	for _, s := range a.cfg.Underlay.Endpoints {
		ap, err := netip.ParseAddrPort(s)
		if err != nil {
			return nil, fmt.Errorf("underlay.endpoints: %q is not ip:port: %w", s, err)
		}
		out = append(out, ap)
	}
	if len(out) > 0 {
		return out, nil
	}
	routes, err := netlink.RouteList(nil, netlink.FAMILY_V4)
	if err != nil {
		return nil, fmt.Errorf("listing routes: %w", err)
	}
	for _, r := range routes {
		if r.Dst != nil && r.Dst.String() != "0.0.0.0/0" {
			continue
		}
		if r.Src != nil {
			if ip, ok := netip.AddrFromSlice(r.Src.To4()); ok {
				return []netip.AddrPort{netip.AddrPortFrom(ip, uint16(a.tun.ListenPort()))}, nil
			}
		}
		link, err := netlink.LinkByIndex(r.LinkIndex)
		if err != nil {
			continue
		}
		addrs, err := netlink.AddrList(link, netlink.FAMILY_V4)
		if err != nil || len(addrs) == 0 {
			continue
		}
		ip, _ := netip.AddrFromSlice(addrs[0].IP.To4())
		return []netip.AddrPort{netip.AddrPortFrom(ip, uint16(a.tun.ListenPort()))}, nil
	}
	return nil, errors.New("no default route to take the underlay address from: set underlay.endpoints (--advertise) to the ip:port peers reach this node at")
}
