/* Shared definitions of Weft's datapath: constants that the Go side mirrors
 * (keep bpf/types.go in step), and the parsed form of a packet. */
#pragma once

#include <stdbool.h>
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define DIR_INGRESS 0
#define DIR_EGRESS 1

#define VERDICT_NONE 0
#define VERDICT_ALLOW 1
#define VERDICT_DENY 2

/* Reserved identities (DESIGN.md). */
#define IDENTITY_ANY 0
#define IDENTITY_HOST 1
#define IDENTITY_WORLD 2
#define IDENTITY_HEALTH 4
#define IDENTITY_REMOTE_NODE 6
#define IDENTITY_ALLOCATED_MIN 256
/* Node-local identities of CIDR peers start here: addresses outside the
 * mesh. Below it, every allocated identity carries its cluster's id in bits
 * 16..27 (identity/clusters.go, the number plan); it must equal
 * identity.CIDRIdentityBase, which a test of bpf checks. */
#define IDENTITY_CIDR_BASE (1U << 28)

/* Drop reasons: the Go side names them (bpf/types.go). Append only. */
#define REASON_NONE 0
#define REASON_POLICY_DEFAULT 1 /* direction enforced, no rule allows it */
#define REASON_POLICY_DENY 2    /* a deny rule matched */
#define REASON_INVALID_SOURCE 3 /* spoofed or impossible source address */
#define REASON_MALFORMED 4      /* truncated or inconsistent headers */
#define REASON_FRAGMENT 5       /* non-first IP fragment: no ports to judge */
#define REASON_SPOOFED_SOURCE 6 /* a mesh address that did not come through the tunnel or its own veth */
#define REASON_UNENCRYPTED 7    /* strict mode: plaintext between mesh nodes' underlay addresses */
#define REASON_MAX 8

#define METRIC_FORWARDED 0
#define METRIC_DROPPED 1
/* Counter slots after the (direction, verdict, reason) block. */
#define METRIC_SLOTS (2 * 2 * REASON_MAX)
#define METRIC_EVENTS_LOST (METRIC_SLOTS + 0)
#define METRIC_DROP_EVENTS_SUPPRESSED (METRIC_SLOTS + 1)
#define METRIC_ENTRIES (METRIC_SLOTS + 2)

#define EVENT_DROP 1
#define EVENT_NEW_CONN 2

#define EP_F_INGRESS_ENFORCED 1
#define EP_F_EGRESS_ENFORCED 2
#define EP_F_HOST 4

/* ipcache_value.flags */
#define IPCACHE_F_NODE 1 /* a mesh node's own mesh address (its node record's meshIP) */

/* event.flags */
#define EVENT_F_NODE_CONTROL 1 /* passed as agent-to-agent control traffic (lib/node.h), not by policy */

/* settings.flags */
#define SETTINGS_F_STRICT 1

/* Control-plane ports strict mode lets through in plaintext between mesh
 * nodes (they are TLS themselves): the join service and etcd. */
#define PORT_JOIN 51834
#define PORT_ETCD_CLIENT 2379
#define PORT_ETCD_PEER 2380

/* UDP ports strict mode lets through between mesh nodes (docs/nat.md):
 * the relay, a node's relay client and the direct-path check. Relays
 * forward only WireGuard messages (ciphertext); checks are 32 bytes of
 * HMAC'd nonce. No workload data is ever plaintext on them. */
#define PORT_RELAY 51838
#define PORT_RELAY_CLIENT 51839
#define PORT_PATH_CHECK 51840

#define ETH_HLEN 14
#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD

#define PROTO_ICMP 1
#define PROTO_TCP 6
#define PROTO_UDP 17
#define PROTO_ICMPV6 58

#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04
#define TCP_ACK 0x10

#define NSEC_PER_SEC 1000000000ULL

/* __weft_func marks a global BPF-to-BPF function. The verifier checks a
 * global function once, on its own, against its argument types, instead of
 * once for every path that reaches a call: inlined, the policy, conntrack,
 * parsing and event code multiplied the paths the verifier walks (about
 * 185,000 instructions per program), and loading the programs is on a
 * joining node's critical path. The price is a call per use at run time (a
 * few ns); pointer arguments other than the context may be NULL as far as
 * the verifier knows, so these functions check them. Arguments are at most
 * five, as for every BPF function. */
#define __weft_func __attribute__((noinline))

/* Result of parsing: pass untouched (not IP, or IPv6 neighbour discovery
 * that must work before any policy can), judge, or drop with a reason. */
#define PARSE_JUDGE 0
#define PARSE_PASS -1

/* A packet reduced to what policy and connection tracking need. Addresses
 * are 16 bytes, IPv4 as IPv4-mapped IPv6 (::ffff:a.b.c.d), so one code path
 * and one map serve both families. Ports are in host byte order; ICMP echo
 * carries its identifier as sport (request) or dport (reply). */
struct flow {
	__u8 saddr[16];
	__u8 daddr[16];
	__u16 sport;
	__u16 dport;
	__u16 policy_port; /* the port policy matches: dport, or the ICMP type */
	__u8 proto;
	__u8 family;
	__u8 tcp_flags;
	__u8 icmp_echo; /* 1 request, 2 reply */
	__u8 pad[2];
	__u32 len;
};

struct ipv4h {
	__u8 vihl;
	__u8 tos;
	__be16 tot_len;
	__be16 id;
	__be16 frag_off;
	__u8 ttl;
	__u8 proto;
	__be16 csum;
	__u8 saddr[4];
	__u8 daddr[4];
};

struct ipv6h {
	__be32 vtcfl;
	__be16 payload_len;
	__u8 nexthdr;
	__u8 hop_limit;
	__u8 saddr[16];
	__u8 daddr[16];
};

static __always_inline void map_v4(__u8 *dst, const __u8 *src)
{
	__builtin_memset(dst, 0, 10);
	dst[10] = 0xff;
	dst[11] = 0xff;
	dst[12] = src[0];
	dst[13] = src[1];
	dst[14] = src[2];
	dst[15] = src[3];
}

__weft_func int parse_l4(struct __sk_buff *skb, struct flow *f, __u32 off, __u32 l4len)
{
	if (!f)
		return REASON_MALFORMED;
	switch (f->proto) {
	case PROTO_TCP: {
		__u8 h[14];
		if (l4len < 20 || bpf_skb_load_bytes(skb, off, h, sizeof(h)) < 0)
			return REASON_MALFORMED;
		if ((h[12] >> 4) < 5 || (__u32)(h[12] >> 4) * 4 > l4len)
			return REASON_MALFORMED;
		f->sport = ((__u16)h[0] << 8) | h[1];
		f->dport = ((__u16)h[2] << 8) | h[3];
		f->tcp_flags = h[13];
		f->policy_port = f->dport;
		return PARSE_JUDGE;
	}
	case PROTO_UDP: {
		__u8 h[8];
		if (l4len < 8 || bpf_skb_load_bytes(skb, off, h, sizeof(h)) < 0)
			return REASON_MALFORMED;
		f->sport = ((__u16)h[0] << 8) | h[1];
		f->dport = ((__u16)h[2] << 8) | h[3];
		f->policy_port = f->dport;
		return PARSE_JUDGE;
	}
	case PROTO_ICMP:
	case PROTO_ICMPV6: {
		__u8 h[8];
		if (l4len < 8 || bpf_skb_load_bytes(skb, off, h, sizeof(h)) < 0)
			return REASON_MALFORMED;
		if ((f->proto == PROTO_ICMP) != (f->family == 4))
			return REASON_MALFORMED;
		__u8 type = h[0];
		f->policy_port = type;
		if (f->proto == PROTO_ICMPV6) {
			/* Router/neighbour discovery and multicast listener
			 * reports keep the link itself working. */
			if ((type >= 130 && type <= 137) || type == 143)
				return PARSE_PASS;
			if (type == 128)
				f->icmp_echo = 1;
			else if (type == 129)
				f->icmp_echo = 2;
		} else {
			if (type == 8)
				f->icmp_echo = 1;
			else if (type == 0)
				f->icmp_echo = 2;
		}
		/* The echo identifier is the "port" of the side that chose it:
		 * source of a request, destination of a reply. A request the
		 * other way thus never looks like a reply. */
		if (f->icmp_echo == 1)
			f->sport = ((__u16)h[4] << 8) | h[5];
		else if (f->icmp_echo == 2)
			f->dport = ((__u16)h[4] << 8) | h[5];
		return PARSE_JUDGE;
	}
	default:
		return PARSE_JUDGE;
	}
}

__weft_func int parse_ipv4(struct __sk_buff *skb, struct flow *f, __u32 off)
{
	if (!f)
		return REASON_MALFORMED;
	struct ipv4h ip;
	if (bpf_skb_load_bytes(skb, off, &ip, sizeof(ip)) < 0)
		return REASON_MALFORMED;
	__u32 ihl = (ip.vihl & 0x0f) * 4;
	__u32 tot = bpf_ntohs(ip.tot_len);
	if ((ip.vihl >> 4) != 4 || ihl < sizeof(ip) || tot < ihl || off + tot > skb->len)
		return REASON_MALFORMED;
	f->family = 4;
	f->proto = ip.proto;
	f->len = tot;
	map_v4(f->saddr, ip.saddr);
	map_v4(f->daddr, ip.daddr);
	if (bpf_ntohs(ip.frag_off) & 0x1fff)
		return REASON_FRAGMENT;
	return parse_l4(skb, f, off + ihl, tot - ihl);
}

#define IPV6_MAX_EXT 6

__weft_func int parse_ipv6(struct __sk_buff *skb, struct flow *f, __u32 off)
{
	if (!f)
		return REASON_MALFORMED;
	struct ipv6h ip;
	if (bpf_skb_load_bytes(skb, off, &ip, sizeof(ip)) < 0)
		return REASON_MALFORMED;
	__u32 plen = bpf_ntohs(ip.payload_len);
	if ((bpf_ntohl(ip.vtcfl) >> 28) != 6 || off + sizeof(ip) + plen > skb->len)
		return REASON_MALFORMED;
	f->family = 6;
	f->len = sizeof(ip) + plen;
	__builtin_memcpy(f->saddr, ip.saddr, 16);
	__builtin_memcpy(f->daddr, ip.daddr, 16);

	__u8 nh = ip.nexthdr;
	__u32 ext = 0; /* bytes of extension headers */
#pragma unroll
	for (int i = 0; i < IPV6_MAX_EXT; i++) {
		__u8 h[4];
		if (nh != 0 && nh != 43 && nh != 60 && nh != 44 && nh != 51)
			break;
		if (ext + 8 > plen || bpf_skb_load_bytes(skb, off + sizeof(ip) + ext, h, sizeof(h)) < 0)
			return REASON_MALFORMED;
		if (nh == 44) { /* fragment header */
			if ((((__u16)h[2] << 8) | h[3]) & 0xfff8)
				return REASON_FRAGMENT;
			ext += 8;
		} else if (nh == 51) { /* authentication header */
			ext += ((__u32)h[1] + 2) * 4;
		} else {
			ext += ((__u32)h[1] + 1) * 8;
		}
		nh = h[0];
	}
	if (nh == 0 || nh == 43 || nh == 60 || nh == 44 || nh == 51)
		return REASON_MALFORMED; /* more extension headers than we walk */
	if (ext > plen)
		return REASON_MALFORMED;
	f->proto = nh;
	return parse_l4(skb, f, off + sizeof(ip) + ext, plen - ext);
}

/* parse_packet fills f; it returns PARSE_JUDGE, PARSE_PASS or a drop reason.
 * L2 devices (veth) carry an Ethernet header; L3 devices (WireGuard, TUN)
 * start at the IP header, whose version nibble says the family. */
__weft_func int parse_packet(struct __sk_buff *skb, __u32 l2, struct flow *f)
{
	if (!f)
		return REASON_MALFORMED;
	__u32 off = 0;
	__u8 version;

	if (l2) {
		__be16 proto;
		if (bpf_skb_load_bytes(skb, 12, &proto, sizeof(proto)) < 0)
			return PARSE_PASS; /* not even an Ethernet header: not IP */
		if (proto == bpf_htons(ETH_P_IP))
			version = 4;
		else if (proto == bpf_htons(ETH_P_IPV6))
			version = 6;
		else
			return PARSE_PASS;
		off = ETH_HLEN;
	} else {
		__u8 b;
		if (bpf_skb_load_bytes(skb, 0, &b, 1) < 0)
			return REASON_MALFORMED;
		version = b >> 4;
		if (version != 4 && version != 6)
			return REASON_MALFORMED;
	}
	if (version == 4)
		return parse_ipv4(skb, f, off);
	return parse_ipv6(skb, f, off);
}

/* A source no packet can legitimately carry: unspecified, multicast,
 * IPv4 limited broadcast, loopback. */
__weft_func int invalid_source(const struct flow *f)
{
	if (!f)
		return true;
	const __u8 *a = f->saddr;
	if (f->family == 4) {
		if (a[12] == 0 || a[12] == 127 || (a[12] & 0xf0) == 0xe0)
			return true;
		return a[12] == 255 && a[13] == 255 && a[14] == 255 && a[15] == 255;
	}
	if (a[0] == 0xff)
		return true;
	__u8 any = 0;
#pragma unroll
	for (int i = 0; i < 15; i++)
		any |= a[i];
	return any == 0 && (a[15] == 0 || a[15] == 1);
}
