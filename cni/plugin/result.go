package plugin

import (
	"fmt"
	"io"
	"net"
	"net/netip"

	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/utils"

	"github.com/weftmesh/weft/agent/api"
)

// PrimaryResult is the CNI result of a pod the agent connected in primary
// mode: the host end of the veth (no sandbox) and the pod's interface
// (sandbox = its namespace), the pod's address as a host route (/32, /128)
// with the agent's gateway, and the default route through it. hostMAC is
// the host end's address, when known (the agent does not send it).
func PrimaryResult(res api.CNIResult, ifName, netns, hostMAC string) (*types100.Result, error) {
	if !res.IP.IsValid() || res.IP.IsUnspecified() {
		return nil, fmt.Errorf("the agent answered without the pod's address")
	}
	ip := res.IP.Unmap()
	if !res.Gateway.IsValid() || res.Gateway.Unmap().Is4() != ip.Is4() {
		return nil, fmt.Errorf("the agent answered without a gateway of the pod's address family (address %s, gateway %v)", ip, res.Gateway)
	}
	gw := res.Gateway.Unmap()
	if e := utils.ValidateInterfaceName(res.HostIface); e != nil {
		return nil, fmt.Errorf("the agent answered with host interface %q: %s", res.HostIface, e.Msg)
	}
	if res.PodMAC != "" {
		if _, err := net.ParseMAC(res.PodMAC); err != nil {
			return nil, fmt.Errorf("the agent answered with pod MAC %q: %w", res.PodMAC, err)
		}
	}
	if res.MTU < 0 || res.MTU > 65535 {
		return nil, fmt.Errorf("the agent answered with MTU %d", res.MTU)
	}
	bits, def := 32, netip.PrefixFrom(netip.IPv4Unspecified(), 0)
	if ip.Is6() {
		bits, def = 128, netip.PrefixFrom(netip.IPv6Unspecified(), 0)
	}
	return &types100.Result{
		CNIVersion: types100.ImplementedSpecVersion,
		Interfaces: []*types100.Interface{
			{Name: res.HostIface, Mac: hostMAC, Mtu: res.MTU},
			{Name: ifName, Mac: res.PodMAC, Mtu: res.MTU, Sandbox: netns},
		},
		IPs: []*types100.IPConfig{{
			Interface: types100.Int(1),
			Address:   ipNet(netip.PrefixFrom(ip, bits)),
			Gateway:   net.IP(gw.AsSlice()),
		}},
		Routes: []*types.Route{{Dst: ipNet(def), GW: net.IP(gw.AsSlice())}},
	}, nil
}

func ipNet(p netip.Prefix) net.IPNet {
	return net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// PrintResult writes r converted to the configuration's cniVersion, as
// the runtime expects it on stdout.
func PrintResult(w io.Writer, r types.Result, cniVersion string) error {
	v, err := r.GetAsVersion(cniVersion)
	if err != nil {
		return fmt.Errorf("converting the result to CNI %s: %w", cniVersion, err)
	}
	return v.PrintTo(w)
}
