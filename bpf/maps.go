package bpf

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

func addrKey(a netip.Addr) [16]byte { return a.As16() }

func prefixKey(p netip.Prefix) (datapathIpcacheKey, error) {
	if !p.IsValid() {
		return datapathIpcacheKey{}, fmt.Errorf("bpf: ipcache prefix %v is not a valid prefix", p)
	}
	if p.Masked() != p {
		return datapathIpcacheKey{}, fmt.Errorf("bpf: ipcache prefix %v has host bits set; use %v", p, p.Masked())
	}
	bits := uint32(p.Bits())
	if p.Addr().Is4() {
		bits += 96
	}
	return datapathIpcacheKey{Prefixlen: bits, Addr: addrKey(p.Addr())}, nil
}

// UpsertIPCache maps every peer address within prefix to identity. The
// longest prefix containing an address wins; addresses no prefix contains
// are the world (identity 2). flags: IPCacheNode for a mesh node's own
// mesh address (a single address), or 0.
func (d *Datapath) UpsertIPCache(prefix netip.Prefix, identity uint32, flags uint32) error {
	k, err := prefixKey(prefix)
	if err != nil {
		return err
	}
	if identity == IdentityAny {
		return fmt.Errorf("bpf: ipcache prefix %v: identity 0 is invalid", prefix)
	}
	if flags&^ipcacheFlags != 0 {
		return fmt.Errorf("bpf: ipcache prefix %v: unknown flags %#x", prefix, flags&^ipcacheFlags)
	}
	if flags&IPCacheNode != 0 && !prefix.IsSingleIP() {
		return fmt.Errorf("bpf: ipcache prefix %v: only a single address can be a node's own address", prefix)
	}
	v := datapathIpcacheValue{Identity: identity, Flags: flags}
	if err := d.objs.Ipcache.Update(&k, &v, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("bpf: ipcache upsert %v: %w", prefix, err)
	}
	return nil
}

// DeleteIPCache removes a prefix; deleting an absent one is not an error.
func (d *Datapath) DeleteIPCache(prefix netip.Prefix) error {
	k, err := prefixKey(prefix)
	if err != nil {
		return err
	}
	if err := d.objs.Ipcache.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("bpf: ipcache delete %v: %w", prefix, err)
	}
	return nil
}

// LookupIdentity returns the identity the datapath gives a peer address.
func (d *Datapath) LookupIdentity(a netip.Addr) (uint32, error) {
	id, _, err := d.LookupIPCache(a)
	return id, err
}

// LookupIPCache returns the identity and the flags the datapath gives a
// peer address (the world and no flags when no prefix contains it).
func (d *Datapath) LookupIPCache(a netip.Addr) (identity, flags uint32, err error) {
	if !a.IsValid() {
		return 0, 0, fmt.Errorf("bpf: ipcache lookup: invalid address")
	}
	k := datapathIpcacheKey{Prefixlen: 128, Addr: addrKey(a.Unmap())}
	var v datapathIpcacheValue
	err = d.objs.Ipcache.Lookup(&k, &v)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return IdentityWorld, 0, nil
	}
	if err != nil {
		return 0, 0, fmt.Errorf("bpf: ipcache lookup %v: %w", a, err)
	}
	return v.Identity, v.Flags, nil
}

// UpsertEndpoint registers (or updates) a local endpoint by its address.
// An endpoint with several addresses is registered once per address. A
// workload's address is bound to the attached workload veth the node
// routes it to (see AttachWorkload): the programs accept the address as a
// source only from there.
func (d *Datapath) UpsertEndpoint(addr netip.Addr, ep Endpoint) error {
	var ifindex uint32
	if addr.IsValid() && !ep.Host {
		ifindex = d.workloadIfindex(addr.Unmap())
	}
	return d.upsertEndpoint(addr, ep, ifindex)
}

func (d *Datapath) upsertEndpoint(addr netip.Addr, ep Endpoint, ifindex uint32) error {
	if !addr.IsValid() || addr.Zone() != "" {
		return fmt.Errorf("bpf: endpoint address %v is invalid (no zones)", addr)
	}
	if ep.ID == 0 {
		return fmt.Errorf("bpf: endpoint %v: id 0 is invalid", addr)
	}
	if ep.Identity == IdentityAny {
		return fmt.Errorf("bpf: endpoint %v: identity 0 is invalid", addr)
	}
	var flags uint32
	if ep.IngressEnforced {
		flags |= epIngressEnforced
	}
	if ep.EgressEnforced {
		flags |= epEgressEnforced
	}
	if ep.Host {
		flags |= epHost
	}
	k := datapathEndpointKey{Addr: addrKey(addr.Unmap())}
	v := datapathEndpointValue{EpId: ep.ID, Identity: ep.Identity, Flags: flags, Ifindex: ifindex}
	if err := d.objs.Endpoints.Update(&k, &v, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("bpf: endpoint upsert %v: %w", addr, err)
	}
	return nil
}

// DeleteEndpoint removes an endpoint address. Its policy entries stay until
// ClearPolicy removes them.
func (d *Datapath) DeleteEndpoint(addr netip.Addr) error {
	if !addr.IsValid() {
		return fmt.Errorf("bpf: endpoint address %v is invalid", addr)
	}
	d.mu.Lock()
	delete(d.bound, addr.Unmap())
	d.mu.Unlock()
	k := datapathEndpointKey{Addr: addrKey(addr.Unmap())}
	if err := d.objs.Endpoints.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("bpf: endpoint delete %v: %w", addr, err)
	}
	return nil
}

func portMask(plen uint8) uint16 {
	if plen == 0 {
		return 0
	}
	return uint16(0xffff) << (16 - plen)
}

func policyMapKey(epID uint32, k PolicyKey) datapathPolicyKey {
	var port [2]byte
	binary.BigEndian.PutUint16(port[:], k.Port&portMask(k.PortPrefixLen))
	return datapathPolicyKey{
		EpId:     epID,
		Identity: k.Identity,
		Dir:      uint8(k.Direction),
		Proto:    k.Protocol,
		// The map holds the port in network byte order; the generated
		// struct field is a native uint16 over the same two bytes.
		Port:      binary.NativeEndian.Uint16(port[:]),
		Prefixlen: k.PortPrefixLen,
	}
}

func policyFromMapKey(mk datapathPolicyKey) PolicyKey {
	var port [2]byte
	binary.NativeEndian.PutUint16(port[:], mk.Port)
	return PolicyKey{
		Direction:     Direction(mk.Dir),
		Identity:      mk.Identity,
		Protocol:      mk.Proto,
		Port:          binary.BigEndian.Uint16(port[:]),
		PortPrefixLen: mk.Prefixlen,
	}
}

// SetPolicy changes an endpoint's policy entries as a diff: upserts are
// written, then deletes removed. Every key is validated first; on invalid
// input nothing changes. A key in both upserts and deletes is an error.
// New entries apply to new connections; see docs/datapath.md for
// established ones.
func (d *Datapath) SetPolicy(epID uint32, upserts map[PolicyKey]Verdict, deletes []PolicyKey) error {
	if epID == 0 {
		return fmt.Errorf("bpf: set policy: endpoint id 0 is invalid")
	}
	var mask uint32
	for k, v := range upserts {
		if err := k.Validate(); err != nil {
			return fmt.Errorf("bpf: set policy for endpoint %d: %w", epID, err)
		}
		if v != Allow && v != Deny {
			return fmt.Errorf("bpf: set policy for endpoint %d: key %v: verdict %d must be 1 (allow) or 2 (deny)", epID, k, v)
		}
		mask |= 1 << k.PortPrefixLen
	}
	for _, k := range deletes {
		if err := k.Validate(); err != nil {
			return fmt.Errorf("bpf: set policy for endpoint %d: delete: %w", epID, err)
		}
		if _, ok := upserts[k]; ok {
			return fmt.Errorf("bpf: set policy for endpoint %d: key %v is both upserted and deleted", epID, k)
		}
	}
	d.policyMu.Lock()
	defer d.policyMu.Unlock()
	if len(upserts) > 0 {
		// The programs probe only the prefix lengths in the mask: widen it
		// before the entries that need it appear.
		var meta datapathPolicyMeta
		err := d.objs.PolicyMeta.Lookup(epID, &meta)
		if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("bpf: set policy for endpoint %d: %w", epID, err)
		}
		if meta.PrefixMask|mask != meta.PrefixMask {
			meta.PrefixMask |= mask
			if err := d.objs.PolicyMeta.Update(epID, &meta, ebpf.UpdateAny); err != nil {
				return fmt.Errorf("bpf: set policy for endpoint %d: the endpoint table is full (%d entries): %w",
					epID, d.cfg.EndpointEntries, err)
			}
		}
	}
	for k, v := range upserts {
		mk := policyMapKey(epID, k)
		mv := datapathPolicyValue{Verdict: uint8(v)}
		if err := d.objs.Policy.Update(&mk, &mv, ebpf.UpdateAny); err != nil {
			if errors.Is(err, unix.E2BIG) || errors.Is(err, unix.ENOSPC) {
				return fmt.Errorf("bpf: set policy for endpoint %d: the policy map is full (%d entries): raise the policy map size: %w",
					epID, d.cfg.PolicyEntries, err)
			}
			return fmt.Errorf("bpf: set policy for endpoint %d: %v: %w", epID, k, err)
		}
	}
	for _, k := range deletes {
		mk := policyMapKey(epID, k)
		if err := d.objs.Policy.Delete(&mk); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("bpf: set policy for endpoint %d: delete %v: %w", epID, k, err)
		}
	}
	return nil
}

// Policy returns an endpoint's policy entries as the datapath holds them.
func (d *Datapath) Policy(epID uint32) (map[PolicyKey]Verdict, error) {
	out := map[PolicyKey]Verdict{}
	var k datapathPolicyKey
	var v datapathPolicyValue
	it := d.objs.Policy.Iterate()
	for it.Next(&k, &v) {
		if k.EpId == epID {
			out[policyFromMapKey(k)] = Verdict(v.Verdict)
		}
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("bpf: reading policy of endpoint %d: %w", epID, err)
	}
	return out, nil
}

// ClearPolicy removes every policy entry of an endpoint (when the endpoint
// goes away).
func (d *Datapath) ClearPolicy(epID uint32) error {
	cur, err := d.Policy(epID)
	if err != nil {
		return err
	}
	del := make([]PolicyKey, 0, len(cur))
	for k := range cur {
		del = append(del, k)
	}
	if err := d.SetPolicy(epID, nil, del); err != nil {
		return err
	}
	d.policyMu.Lock()
	defer d.policyMu.Unlock()
	if err := d.objs.PolicyMeta.Delete(epID); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("bpf: clearing policy of endpoint %d: %w", epID, err)
	}
	return nil
}

// FlushConnections forgets every tracked connection to or from addr, so
// that their next packets are judged by the current policy: the way to
// make a policy change cut established connections.
func (d *Datapath) FlushConnections(addr netip.Addr) (int, error) {
	if !addr.IsValid() {
		return 0, fmt.Errorf("bpf: flush connections: invalid address")
	}
	a := addrKey(addr.Unmap())
	var k datapathCtKey
	var v datapathCtEntry
	var doomed []datapathCtKey
	it := d.objs.Ct.Iterate()
	for it.Next(&k, &v) {
		if k.Saddr == a || k.Daddr == a {
			doomed = append(doomed, k)
		}
	}
	if err := it.Err(); err != nil {
		return 0, fmt.Errorf("bpf: flush connections of %v: %w", addr, err)
	}
	n := 0
	for i := range doomed {
		if err := d.objs.Ct.Delete(&doomed[i]); err == nil {
			n++
		}
	}
	return n, nil
}
