//go:build ignore

// SPDX-License-Identifier: (MIT OR GPL-2.0)
/* Weft's datapath: identity-aware policy with connection tracking.
 *
 * Four entry points, one per hook:
 *   weft_from_wl   tc ingress of a workload veth's host end: packets the
 *                  workload sends, judged by its egress policy;
 *   weft_to_wl     tc egress of that host end: packets to the workload,
 *                  judged by its ingress policy;
 *   weft_from_dev  tc ingress of the WireGuard/TUN device (L3): packets from
 *                  the mesh to the node's own host endpoint (ingress policy);
 *   weft_to_dev    tc egress of that device: the host endpoint's packets to
 *                  the mesh (egress policy);
 *   weft_from_underlay, weft_from_underlay3
 *                  tc ingress of the node's underlay interfaces (L2, L3):
 *                  no policy, only anti-spoofing and strict mode
 *                  (lib/antispoof.h).
 *
 * On the mesh device, control traffic between two nodes' own mesh
 * addresses on the agents' ports passes whatever the policy (lib/node.h).
 */
#include "lib/common.h"
#include "lib/maps.h"
#include "lib/config.h"
#include "lib/metrics.h"
#include "lib/policy.h"
#include "lib/conntrack.h"
#include "lib/antispoof.h"
#include "lib/node.h"

char LICENSE[] SEC("license") = "Dual MIT/GPL";

/* Keeps struct event in BTF so bpf2go generates its Go twin. */
const struct event *unused_event __attribute__((unused));

/* peer_identity is the identity of the other end: the ipcache's longest
 * prefix for the peer's address, or the world. *flags are that entry's
 * IPCACHE_F_* (0 for the world). */
static __always_inline __u32 peer_identity(const struct flow *f, __u8 dir, __u32 *flags)
{
	struct ipcache_key ik = {.prefixlen = 128};
	__builtin_memcpy(ik.addr, dir == DIR_EGRESS ? f->daddr : f->saddr, 16);
	struct ipcache_value *peer = bpf_map_lookup_elem(&ipcache, &ik);
	if (!peer) {
		*flags = 0;
		return IDENTITY_WORLD;
	}
	*flags = peer->flags;
	return peer->identity;
}

/* handle judges one packet. It is inlined into each entry point with l3 and
 * dir constant, so each program holds only its own hook's logic; the work
 * shared by all of them is in global functions, verified once each. */
static __always_inline int handle(struct __sk_buff *skb, bool l3, __u8 dir)
{
	struct flow f = {};
	struct verdict_ctx v = {.now = bpf_ktime_get_ns(), .dir = dir, .l3 = l3};

	int r = parse_packet(skb, !l3, &f);
	if (r == PARSE_PASS)
		return TC_ACT_UNSPEC;
	if (r != PARSE_JUDGE)
		return drop(skb, &f, &v, r);

	struct endpoint_key ek;
	__builtin_memcpy(ek.addr, dir == DIR_EGRESS ? f.saddr : f.daddr, 16);
	struct endpoint_value *ep = bpf_map_lookup_elem(&endpoints, &ek);
	if (!ep) {
		/* A workload may only send from its own addresses; anything
		 * else on these hooks is not for an endpoint of ours. Another
		 * node's mesh address is a forgery, not a mistake. */
		if (!l3 && dir == DIR_EGRESS) {
			v.src_identity = addr_identity(&f, 0);
			return drop(skb, &f, &v, mesh_identity(v.src_identity) ? REASON_SPOOFED_SOURCE : REASON_INVALID_SOURCE);
		}
		return TC_ACT_UNSPEC;
	}
	/* Copied out so that no map pointer stays live across the calls
	 * below: fewer registers for the verifier to track. */
	__u32 ep_id = ep->ep_id, ep_identity = ep->identity, ep_flags = ep->flags, ep_ifindex = ep->ifindex;
	/* On the mesh device only the host endpoint is ours: workloads'
	 * routed packets are judged at their own veth. */
	if (l3 && !(ep_flags & EP_F_HOST))
		return TC_ACT_UNSPEC;

	v.ep_id = ep_id;
	if (!l3) {
		/* The source must have come from where it lives: a workload
		 * sends only from its own veth (not with another local
		 * endpoint's address), and a packet to a workload entered the
		 * node through the tunnel, its source's own veth, or carries no
		 * mesh source (entry_check). Before conntrack, so that a forged
		 * packet of an established connection is dropped too. */
		int reason = REASON_NONE;
		if (dir == DIR_EGRESS)
			reason = ep_ifindex != 0 && ep_ifindex == skb->ifindex ? REASON_NONE : REASON_SPOOFED_SOURCE;
		else
			reason = entry_check(skb, &f);
		if (reason != REASON_NONE) {
			/* The sender is whoever sits behind this veth, not
			 * the endpoint whose address it used. */
			if (dir == DIR_EGRESS)
				v.ep_id = 0;
			__u32 peer_flags;
			__u32 peer_id = peer_identity(&f, dir, &peer_flags);
			v.src_identity = dir == DIR_EGRESS ? ep_identity : peer_id;
			v.dst_identity = dir == DIR_EGRESS ? peer_id : ep_identity;
			return drop(skb, &f, &v, reason);
		}
	}
	__u32 peer_flags;
	if (invalid_source(&f)) {
		__u32 peer_id = peer_identity(&f, dir, &peer_flags);
		v.src_identity = dir == DIR_EGRESS ? ep_identity : peer_id;
		v.dst_identity = dir == DIR_EGRESS ? peer_id : ep_identity;
		return drop(skb, &f, &v, REASON_INVALID_SOURCE);
	}

	/* Most packets belong to a tracked connection: they need neither the
	 * peer's identity nor policy. */
	if (ct_track(&f, dir, v.now) != CT_NEW) {
		count(dir, METRIC_FORWARDED, REASON_NONE, f.len);
		return TC_ACT_UNSPEC;
	}

	__u32 peer_id = peer_identity(&f, dir, &peer_flags);
	v.src_identity = dir == DIR_EGRESS ? ep_identity : peer_id;
	v.dst_identity = dir == DIR_EGRESS ? peer_id : ep_identity;

	if (node_control(&f, l3, peer_flags)) {
		/* Agent to agent between two nodes' own addresses: the tunnel
		 * vouched for the peer, no policy can cut it (lib/node.h).
		 * Its event says so. */
		v.flags = EVENT_F_NODE_CONTROL;
	} else {
		bool enforced = ep_flags & (dir == DIR_EGRESS ? EP_F_EGRESS_ENFORCED : EP_F_INGRESS_ENFORCED);
		int reason = policy_decide(ep_id, dir, enforced, peer_id, &f);
		if (reason != REASON_NONE)
			return drop(skb, &f, &v, reason);
	}

	if (ct_create(&f, dir, ep_id, peer_id, v.now))
		emit_event(skb, &f, &v, EVENT_NEW_CONN, REASON_NONE);
	count(dir, METRIC_FORWARDED, REASON_NONE, f.len);
	return TC_ACT_UNSPEC;
}

SEC("tc")
int weft_from_wl(struct __sk_buff *skb)
{
	return handle(skb, false, DIR_EGRESS);
}

SEC("tc")
int weft_to_wl(struct __sk_buff *skb)
{
	return handle(skb, false, DIR_INGRESS);
}

SEC("tc")
int weft_from_dev(struct __sk_buff *skb)
{
	return handle(skb, true, DIR_INGRESS);
}

SEC("tc")
int weft_to_dev(struct __sk_buff *skb)
{
	return handle(skb, true, DIR_EGRESS);
}

/* underlay judges a packet arriving on an underlay interface: it passes
 * unless it carries a mesh address or, in strict mode, is plaintext from
 * another mesh node (underlay_verdict). */
static __always_inline int underlay(struct __sk_buff *skb, bool l3)
{
	struct flow f = {};
	int r = parse_packet(skb, !l3, &f);
	if (r == PARSE_PASS || f.family == 0)
		return TC_ACT_UNSPEC; /* not IP, or not even its addresses */
	r = underlay_verdict(&f, r);
	if (r == REASON_NONE)
		return TC_ACT_UNSPEC;
	struct verdict_ctx v = {.now = bpf_ktime_get_ns(), .dir = DIR_INGRESS, .l3 = l3};
	v.src_identity = addr_identity(&f, 0);
	v.dst_identity = addr_identity(&f, 1);
	return drop(skb, &f, &v, r);
}

SEC("tc")
int weft_from_underlay(struct __sk_buff *skb)
{
	return underlay(skb, false);
}

SEC("tc")
int weft_from_underlay3(struct __sk_buff *skb)
{
	return underlay(skb, true);
}
