/* Anti-spoofing. A packet's source identity is trustworthy only when the
 * packet came through the WireGuard device, whose cryptokey routing bound
 * its source to the sending peer's allowed IPs, or from the veth of the
 * local endpoint that owns the address. Anything else carrying a mesh
 * address (source or, on the underlay, destination) is a forgery or a way
 * around the host endpoint's programs, and is dropped as spoofed-source.
 * Strict mode also drops plaintext between mesh nodes' underlay addresses
 * other than WireGuard, the join service and etcd. */
#pragma once

#include "maps.h"

/* mesh_identity: whether an ipcache identity names something of the mesh
 * (allocated identities and the reserved host, health and remote-node
 * ones), as opposed to the world, other reserved numbers and the node-local
 * identities of CIDR peers, which are addresses outside the mesh. */
static __always_inline bool mesh_identity(__u32 id)
{
	return id == IDENTITY_HOST || id == IDENTITY_HEALTH || id == IDENTITY_REMOTE_NODE ||
	       (id >= IDENTITY_ALLOCATED_MIN && id < IDENTITY_CIDR_BASE);
}

/* addr_identity is the ipcache identity of f's source (which 0) or
 * destination (which 1): the longest prefix, or the world. */
__weft_func __u32 addr_identity(const struct flow *f, __u32 which)
{
	if (!f)
		return IDENTITY_WORLD;
	struct ipcache_key k = {.prefixlen = 128};
	__builtin_memcpy(k.addr, which ? f->daddr : f->saddr, 16);
	struct ipcache_value *v = bpf_map_lookup_elem(&ipcache, &k);
	return v ? v->identity : IDENTITY_WORLD;
}

static __always_inline struct settings *settings_get(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&settings, &zero);
}

/* entry_check judges where a packet about to be delivered to a workload
 * entered the node (skb->ingress_ifindex): the node itself (0) and the
 * WireGuard device are believed; a local veth only for the addresses of
 * the endpoint behind it; any other interface (the underlay) only for
 * sources outside the mesh. It returns REASON_NONE or the drop reason. */
__weft_func int entry_check(struct __sk_buff *skb, const struct flow *f)
{
	if (!f)
		return REASON_SPOOFED_SOURCE;
	__u32 iif = skb->ingress_ifindex;
	if (iif == 0)
		return REASON_NONE;
	struct settings *s = settings_get();
	if (s && s->wg_ifindex != 0 && iif == s->wg_ifindex)
		return REASON_NONE;
	struct endpoint_key ek;
	__builtin_memcpy(ek.addr, f->saddr, 16);
	struct endpoint_value *ep = bpf_map_lookup_elem(&endpoints, &ek);
	if (ep)
		return ep->ifindex != 0 && ep->ifindex == iif ? REASON_NONE : REASON_SPOOFED_SOURCE;
	return mesh_identity(addr_identity(f, 0)) ? REASON_SPOOFED_SOURCE : REASON_NONE;
}

static __always_inline bool control_port(__u16 port)
{
	return port == PORT_JOIN || port == PORT_ETCD_CLIENT || port == PORT_ETCD_PEER;
}

/* strict_allowed: what strict mode lets through in plaintext between mesh
 * nodes: WireGuard to this node's listen port, relayed WireGuard and
 * direct-path checks to their fixed ports, TCP to or from the join
 * service and etcd (TLS of their own), and the ICMP errors path MTU
 * discovery of the tunnel's datagrams needs. "From" those ports only for
 * what is no connection request: a node choosing 2379 as its source port
 * must not open a plaintext connection to any port of another. */
static __always_inline bool strict_allowed(const struct flow *f, __u16 wg_port)
{
	switch (f->proto) {
	case PROTO_UDP:
		if (f->dport == PORT_RELAY || f->dport == PORT_RELAY_CLIENT || f->dport == PORT_PATH_CHECK)
			return true;
		return wg_port != 0 && f->dport == wg_port;
	case PROTO_TCP:
		if (control_port(f->dport))
			return true;
		return control_port(f->sport) && (f->tcp_flags & (TCP_SYN | TCP_ACK)) != TCP_SYN;
	case PROTO_ICMP:
		return f->policy_port == 3; /* destination unreachable, fragmentation needed */
	case PROTO_ICMPV6:
		return f->policy_port == 1 || f->policy_port == 2; /* unreachable, packet too big */
	}
	return false;
}

/* underlay_verdict judges a packet arriving on an underlay interface;
 * parsed is parse_packet's result (the addresses are set). Mesh traffic
 * only ever travels inside WireGuard, so a mesh source or destination here
 * is dropped; with strict mode, so is plaintext from another mesh node's
 * underlay address. Everything else passes. */
__weft_func int underlay_verdict(const struct flow *f, int parsed)
{
	if (!f)
		return REASON_NONE;
	if (mesh_identity(addr_identity(f, 0)) || mesh_identity(addr_identity(f, 1)))
		return REASON_SPOOFED_SOURCE;
	if (parsed != PARSE_JUDGE)
		return REASON_NONE; /* fragments and broken headers: the stack's business */
	struct settings *s = settings_get();
	if (!s || !(s->flags & SETTINGS_F_STRICT))
		return REASON_NONE;
	struct underlay_key k;
	__builtin_memcpy(k.addr, f->saddr, 16);
	if (!bpf_map_lookup_elem(&underlay_nodes, &k))
		return REASON_NONE;
	return strict_allowed(f, s->wg_port) ? REASON_NONE : REASON_UNENCRYPTED;
}
