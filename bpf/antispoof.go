package bpf

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
)

// Anti-spoofing state (docs/datapath.md, "Anti-spoofing"): which veth each
// workload address lives behind (the endpoint value's ifindex), the
// WireGuard device's ifindex and strict mode (the settings map), and the
// other mesh nodes' underlay addresses (underlay_nodes).

// workloadIfindex is the interface a workload address lives behind: the
// workload veth attached by this process that the node routes addr to, or
// 0 when there is none (yet: AttachWorkload binds it then). Routes are read
// in the calling thread's network namespace, as attachments are made.
func (d *Datapath) workloadIfindex(addr netip.Addr) uint32 {
	d.mu.Lock()
	bidx, bound := d.bound[addr]
	d.mu.Unlock()
	if bound {
		return uint32(bidx)
	}
	routes, err := netlink.RouteGet(addr.AsSlice())
	if err != nil || len(routes) == 0 {
		return 0
	}
	idx := routes[0].LinkIndex
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, a := range d.attached {
		if a.kind == kindWorkload && a.ifindex == idx {
			return uint32(idx)
		}
	}
	return 0
}

// bindWorkloadAddrs binds to ifindex every registered workload address the
// node routes there. AttachWorkload calls it before the new programs
// replace the old ones, so an endpoint written before its veth was
// attached (or carried over from pins of an older layout, without an
// ifindex) is never refused by them.
func (d *Datapath) bindWorkloadAddrs(ifindex int) error {
	link, err := netlink.LinkByIndex(ifindex)
	if err != nil {
		return err
	}
	routes, err := netlink.RouteList(link, netlink.FAMILY_ALL)
	if err != nil {
		return err
	}
	var via []netip.Prefix
	for _, r := range routes {
		if r.Dst == nil {
			continue
		}
		if p, ok := netipPrefix(r.Dst.IP, r.Dst.Mask); ok {
			via = append(via, p)
		}
	}
	if len(via) == 0 {
		return nil
	}
	var (
		k     datapathEndpointKey
		v     datapathEndpointValue
		bound = map[datapathEndpointKey]datapathEndpointValue{}
	)
	it := d.objs.Endpoints.Iterate()
	for it.Next(&k, &v) {
		if v.Flags&epHost != 0 || v.Ifindex == uint32(ifindex) {
			continue
		}
		addr := netip.AddrFrom16(k.Addr).Unmap()
		if !containedIn(via, addr) {
			continue
		}
		// The longest prefix may still point elsewhere: ask the kernel.
		if rs, err := netlink.RouteGet(addr.AsSlice()); err != nil || len(rs) == 0 || rs[0].LinkIndex != ifindex {
			continue
		}
		v.Ifindex = uint32(ifindex)
		bound[k] = v
	}
	if err := it.Err(); err != nil {
		return err
	}
	for k, v := range bound {
		if err := d.objs.Endpoints.Update(&k, &v, ebpf.UpdateExist); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return err
		}
	}
	return nil
}

func containedIn(ps []netip.Prefix, a netip.Addr) bool {
	for _, p := range ps {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

func netipPrefix(ip []byte, mask []byte) (netip.Prefix, bool) {
	a, ok := netip.AddrFromSlice(ip)
	if !ok {
		return netip.Prefix{}, false
	}
	ones := 0
	for _, b := range mask {
		for ; b&0x80 != 0; b <<= 1 {
			ones++
		}
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, ones).Masked(), true
}

// updateSettings changes the programs' settings entry.
func (d *Datapath) updateSettings(change func(*datapathSettings)) error {
	d.settingsMu.Lock()
	defer d.settingsMu.Unlock()
	var s datapathSettings
	if err := d.objs.Settings.Lookup(uint32(0), &s); err != nil {
		return fmt.Errorf("bpf: reading the datapath settings: %w", err)
	}
	change(&s)
	if err := d.objs.Settings.Update(uint32(0), &s, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("bpf: writing the datapath settings: %w", err)
	}
	return nil
}

// SetStrict turns strict mode on or off: the underlay programs then also
// drop plaintext from the other mesh nodes' underlay addresses
// (SetUnderlayNodes) except WireGuard to wgPort, the node's listen port,
// and TCP to or from the join service (51834) and etcd (2379-2380).
func (d *Datapath) SetStrict(strict bool, wgPort uint16) error {
	return d.updateSettings(func(s *datapathSettings) {
		s.Flags &^= settingsStrict
		if strict {
			s.Flags |= settingsStrict
		}
		s.WgPort = wgPort
	})
}

const settingsStrict = 1 // SETTINGS_F_STRICT

// UnderlayNodes returns the underlay addresses strict mode knows as other
// mesh nodes'.
func (d *Datapath) UnderlayNodes() ([]netip.Addr, error) {
	var (
		k   datapathUnderlayKey
		v   datapathUnderlayValue
		out []netip.Addr
	)
	it := d.objs.UnderlayNodes.Iterate()
	for it.Next(&k, &v) {
		out = append(out, netip.AddrFrom16(k.Addr).Unmap())
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("bpf: reading the underlay nodes: %w", err)
	}
	return out, nil
}

// UpsertUnderlayNode records addr as another mesh node's underlay address.
func (d *Datapath) UpsertUnderlayNode(addr netip.Addr) error {
	if !addr.IsValid() || addr.Zone() != "" {
		return fmt.Errorf("bpf: underlay node address %v is invalid (no zones)", addr)
	}
	k := datapathUnderlayKey{Addr: addrKey(addr.Unmap())}
	if err := d.objs.UnderlayNodes.Update(&k, &datapathUnderlayValue{}, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("bpf: underlay node upsert %v: the table holds %d addresses: %w", addr, d.objs.UnderlayNodes.MaxEntries(), err)
	}
	return nil
}

// DeleteUnderlayNode forgets an underlay address; an absent one is not an
// error.
func (d *Datapath) DeleteUnderlayNode(addr netip.Addr) error {
	if !addr.IsValid() {
		return fmt.Errorf("bpf: underlay node address %v is invalid", addr)
	}
	k := datapathUnderlayKey{Addr: addrKey(addr.Unmap())}
	if err := d.objs.UnderlayNodes.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("bpf: underlay node delete %v: %w", addr, err)
	}
	return nil
}

// BindWorkload binds a workload address to the veth iface (attached with
// AttachWorkload) explicitly, for veths the node does not route the address
// to: a pod's veth on a bridge, when Weft is chained after the bridge
// plugin (the node routes the pod through the bridge device). The programs
// then accept addr as a source only from that veth, as for routed ones. An
// endpoint already registered at addr is rebound at once.
func (d *Datapath) BindWorkload(addr netip.Addr, iface string) error {
	l, err := netlink.LinkByName(iface)
	if err != nil {
		return fmt.Errorf("bpf: binding %v to %s: %w", addr, iface, err)
	}
	addr = addr.Unmap()
	idx := l.Attrs().Index
	d.mu.Lock()
	d.bound[addr] = idx
	d.mu.Unlock()
	k := datapathEndpointKey{Addr: addrKey(addr)}
	var v datapathEndpointValue
	if err := d.objs.Endpoints.Lookup(&k, &v); err != nil {
		return nil // registered later, with the binding
	}
	if v.Ifindex == uint32(idx) {
		return nil
	}
	v.Ifindex = uint32(idx)
	if err := d.objs.Endpoints.Update(&k, &v, ebpf.UpdateExist); err != nil {
		return fmt.Errorf("bpf: rebinding endpoint %v: %w", addr, err)
	}
	return nil
}
