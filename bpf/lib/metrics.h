/* Counters and flow events. */
#pragma once

#include "maps.h"
#include "config.h"

static __always_inline void count(__u8 dir, __u8 verdict, __u8 reason, __u32 bytes)
{
	__u32 idx = ((__u32)(dir & 1) * 2 + (verdict & 1)) * REASON_MAX + (reason & (REASON_MAX - 1));
	struct metric_value *m = bpf_map_lookup_elem(&metrics, &idx);
	if (m) {
		m->packets++;
		m->bytes += bytes;
	}
}

static __always_inline void count_slot(__u32 idx)
{
	struct metric_value *m = bpf_map_lookup_elem(&metrics, &idx);
	if (m)
		m->packets++;
}

/* drop_event_allowed is a per-CPU token bucket: a flood of dropped packets
 * must not turn into a flood of events the agent has to read. */
static __always_inline bool drop_event_allowed(__u64 now)
{
	__u32 zero = 0;
	__u64 rate = drop_events_per_sec, burst = drop_events_burst;
	if (rate == 0)
		return true;
	struct rate_state *s = bpf_map_lookup_elem(&drop_limit, &zero);
	if (!s)
		return false;
	__u64 elapsed = now - s->last;
	if (elapsed >= NSEC_PER_SEC) {
		s->tokens = burst;
		s->last = now;
	} else {
		__u64 add = elapsed * rate / NSEC_PER_SEC;
		if (add) {
			s->tokens += add;
			if (s->tokens > burst)
				s->tokens = burst;
			s->last = now;
		}
	}
	if (s->tokens == 0)
		return false;
	s->tokens--;
	return true;
}

/* verdict_ctx is what an event says besides the packet: where and when it
 * was judged, and between whom. */
struct verdict_ctx {
	__u64 now; /* bpf_ktime_get_ns() when the packet arrived */
	__u32 ep_id;
	__u32 src_identity;
	__u32 dst_identity;
	__u8 dir;
	__u8 l3;
	__u8 flags; /* EVENT_F_* */
	__u8 pad;
};

__weft_func int emit_event(struct __sk_buff *skb, const struct flow *f,
			   const struct verdict_ctx *v, __u32 type, __u32 reason)
{
	if (!f || !v)
		return 0;
	struct event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count_slot(METRIC_EVENTS_LOST);
		return 0;
	}
	e->ts = v->now;
	e->ep_id = v->ep_id;
	e->src_identity = v->src_identity;
	e->dst_identity = v->dst_identity;
	e->ifindex = skb->ifindex;
	e->len = f->len ? f->len : skb->len;
	e->type = type;
	e->reason = reason;
	e->dir = v->dir;
	e->proto = f->proto;
	__builtin_memcpy(e->saddr, f->saddr, 16);
	__builtin_memcpy(e->daddr, f->daddr, 16);
	e->sport = f->sport;
	e->dport = f->dport;
	e->l3 = v->l3;
	e->tcp_flags = f->tcp_flags;
	e->family = f->family;
	e->flags = v->flags;
	bpf_ringbuf_submit(e, 0);
	return 0;
}

/* drop counts a dropped packet, reports it (rate-limited) and returns the
 * verdict that drops it. */
__weft_func int drop(struct __sk_buff *skb, const struct flow *f,
		     const struct verdict_ctx *v, __u32 reason)
{
	if (!f || !v)
		return TC_ACT_SHOT;
	count(v->dir, METRIC_DROPPED, reason, f->len ? f->len : skb->len);
	if (drop_event_allowed(v->now))
		emit_event(skb, f, v, EVENT_DROP, reason);
	else
		count_slot(METRIC_DROP_EVENTS_SUPPRESSED);
	return TC_ACT_SHOT;
}
