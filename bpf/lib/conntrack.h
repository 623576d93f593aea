/* Connection tracking: once policy admits a connection, its later packets
 * and its replies pass without another policy decision. */
#pragma once

#include "maps.h"
#include "config.h"

#define CT_NEW 0
#define CT_ORIGINAL 1
#define CT_REPLY 2

static __always_inline void ct_fill_key(struct ct_key *k, const struct flow *f, __u8 dir, bool reverse)
{
	if (reverse) {
		__builtin_memcpy(k->saddr, f->daddr, 16);
		__builtin_memcpy(k->daddr, f->saddr, 16);
		k->sport = f->dport;
		k->dport = f->sport;
	} else {
		__builtin_memcpy(k->saddr, f->saddr, 16);
		__builtin_memcpy(k->daddr, f->daddr, 16);
		k->sport = f->sport;
		k->dport = f->dport;
	}
	k->proto = f->proto;
	k->dir = dir;
	k->pad[0] = 0;
	k->pad[1] = 0;
}

static __always_inline __u64 ct_timeout(const struct flow *f, __u8 state)
{
	__u32 s;
	switch (f->proto) {
	case PROTO_TCP:
		if (state == CT_CLOSING)
			s = ct_timeout_closing;
		else if (state == CT_SYN_SENT)
			s = ct_timeout_syn;
		else
			s = ct_timeout_tcp;
		break;
	case PROTO_UDP:
		s = ct_timeout_udp;
		break;
	case PROTO_ICMP:
	case PROTO_ICMPV6:
		s = ct_timeout_icmp;
		break;
	default:
		s = ct_timeout_other;
	}
	return (__u64)s * NSEC_PER_SEC;
}

/* ct_refresh advances the TCP state machine and the deadline. The deadline
 * is written only when it moves by more than a second, so a busy flow does
 * not dirty a shared cache line on every packet. */
static __always_inline void ct_refresh(struct ct_entry *e, const struct flow *f, int where, __u64 now)
{
	__u8 state = e->state;
	if (f->proto == PROTO_TCP) {
		if (f->tcp_flags & TCP_RST) {
			state = CT_CLOSING;
		} else {
			if (f->tcp_flags & TCP_FIN) {
				__u8 bit = where == CT_REPLY ? 2 : 1;
				if (!(e->fin_seen & bit))
					e->fin_seen |= bit;
			}
			if (e->fin_seen == 3)
				state = CT_CLOSING;
			else if (state == CT_SYN_SENT && where == CT_REPLY)
				state = CT_ESTABLISHED;
		}
	}
	if (state != e->state)
		e->state = state;
	__u64 deadline = now + ct_timeout(f, state);
	if (state == CT_CLOSING) {
		/* Closing connections never get their deadline pushed out. */
		if (e->expires > deadline)
			e->expires = deadline;
	} else if (deadline > e->expires + NSEC_PER_SEC) {
		e->expires = deadline;
	}
}

/* ct_track finds the connection a packet belongs to, in the direction
 * being judged (the original direction) or as a reply to a connection
 * admitted the other way, and refreshes it. A fresh SYN on a closing
 * connection starts a new one, which policy judges again. It returns
 * CT_NEW when the packet belongs to no tracked connection. */
__weft_func int ct_track(const struct flow *f, __u32 dir, __u64 now)
{
	struct ct_key k;
	struct ct_entry *e;

	if (!f)
		return CT_NEW;
	ct_fill_key(&k, f, dir, false);
	e = bpf_map_lookup_elem(&ct, &k);
	if (e && e->expires > now) {
		if (f->proto == PROTO_TCP && e->state == CT_CLOSING &&
		    (f->tcp_flags & (TCP_SYN | TCP_ACK)) == TCP_SYN) {
			bpf_map_delete_elem(&ct, &k);
			return CT_NEW;
		}
		ct_refresh(e, f, CT_ORIGINAL, now);
		return CT_ORIGINAL;
	}
	ct_fill_key(&k, f, dir ^ 1, true);
	e = bpf_map_lookup_elem(&ct, &k);
	if (e && e->expires > now) {
		ct_refresh(e, f, CT_REPLY, now);
		return CT_REPLY;
	}
	return CT_NEW;
}

/* ct_create records a connection policy just admitted. It returns false for
 * packets that do not open one (a stray RST, an ICMP error or echo reply). */
__weft_func int ct_create(const struct flow *f, __u32 dir, __u32 ep_id, __u32 peer, __u64 now)
{
	if (!f)
		return false;
	__u8 state = CT_ESTABLISHED;
	if (f->proto == PROTO_TCP) {
		if (f->tcp_flags & TCP_RST)
			return false;
		if ((f->tcp_flags & (TCP_SYN | TCP_ACK)) == TCP_SYN)
			state = CT_SYN_SENT;
	} else if (f->proto == PROTO_ICMP || f->proto == PROTO_ICMPV6) {
		if (f->icmp_echo != 1)
			return false;
	}
	struct ct_key k;
	ct_fill_key(&k, f, dir, false);
	struct ct_entry e = {
		.expires = now + ct_timeout(f, state),
		.ep_id = ep_id,
		.peer_identity = peer,
		.state = state,
	};
	bpf_map_update_elem(&ct, &k, &e, BPF_ANY);
	return true;
}
