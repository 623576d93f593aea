/* Policy decision for a new connection. */
#pragma once

#include "maps.h"

/* policy_lookup finds the entry with the longest port prefix matching port
 * in the (identity, protocol) family k names; it fills in k's port and
 * prefix length as it probes. Only the prefix lengths in mask are probed.
 * A global function, it is verified once however many families are asked. */
__weft_func int policy_lookup(struct policy_key *k, __u32 port, __u32 mask)
{
	if (!k)
		return VERDICT_NONE;
	for (int plen = 16; plen >= 0; plen--) {
		if (!(mask & (1U << plen)))
			continue;
		__u16 m = plen ? (__u16)(0xffff << (16 - plen)) : 0;
		k->port = bpf_htons(port & m);
		k->prefixlen = plen;
		struct policy_value *v = bpf_map_lookup_elem(&policy, k);
		if (v)
			return v->verdict;
	}
	return VERDICT_NONE;
}

/* policy_decide returns REASON_NONE to allow or the drop reason. It asks
 * the four (identity, protocol) families, each by longest port prefix:
 * any deny wins, then any allow, then the direction's default. */
__weft_func int policy_decide(__u32 ep_id, __u32 dir, __u32 enforced, __u32 identity,
			      const struct flow *f)
{
	__u8 fallback = enforced ? REASON_POLICY_DEFAULT : REASON_NONE;
	if (!f)
		return fallback;
	struct policy_meta *meta = bpf_map_lookup_elem(&policy_meta, &ep_id);
	if (!meta)
		return fallback;
	__u32 mask = meta->prefix_mask;
	__u16 port = f->policy_port;
	struct policy_key k = {.ep_id = ep_id, .dir = dir};

	k.identity = identity;
	k.proto = f->proto;
	__u8 a = policy_lookup(&k, port, mask);
	k.proto = 0;
	__u8 b = policy_lookup(&k, port, mask);
	k.identity = IDENTITY_ANY;
	k.proto = f->proto;
	__u8 c = policy_lookup(&k, port, mask);
	k.proto = 0;
	__u8 d = policy_lookup(&k, port, mask);

	if (a == VERDICT_DENY || b == VERDICT_DENY || c == VERDICT_DENY || d == VERDICT_DENY)
		return REASON_POLICY_DENY;
	if (a == VERDICT_ALLOW || b == VERDICT_ALLOW || c == VERDICT_ALLOW || d == VERDICT_ALLOW)
		return REASON_NONE;
	return fallback;
}
