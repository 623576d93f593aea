/* Policy decision for a new connection. */
#pragma once

#include "maps.h"

/* policy_lookup finds the entry with the longest port prefix matching port
 * in one (identity, protocol) family. */
static __always_inline __u8 policy_lookup(__u32 ep_id, __u8 dir, __u32 identity, __u8 proto,
					  __u16 port, __u32 mask)
{
	struct policy_key k = {
		.ep_id = ep_id,
		.identity = identity,
		.dir = dir,
		.proto = proto,
	};
	for (int plen = 16; plen >= 0; plen--) {
		if (!(mask & (1U << plen)))
			continue;
		__u16 m = plen ? (__u16)(0xffff << (16 - plen)) : 0;
		k.port = bpf_htons(port & m);
		k.prefixlen = plen;
		struct policy_value *v = bpf_map_lookup_elem(&policy, &k);
		if (v)
			return v->verdict;
	}
	return VERDICT_NONE;
}

/* policy_decide returns REASON_NONE to allow or the drop reason. It asks
 * the four (identity, protocol) families, each by longest port prefix:
 * any deny wins, then any allow, then the direction's default. */
static __always_inline __u8 policy_decide(__u32 ep_id, __u8 dir, bool enforced,
					  __u32 identity, __u8 proto, __u16 port)
{
	struct policy_meta *meta = bpf_map_lookup_elem(&policy_meta, &ep_id);
	if (!meta)
		return enforced ? REASON_POLICY_DEFAULT : REASON_NONE;
	__u32 mask = meta->prefix_mask;

	__u8 a = policy_lookup(ep_id, dir, identity, proto, port, mask);
	__u8 b = policy_lookup(ep_id, dir, identity, 0, port, mask);
	__u8 c = policy_lookup(ep_id, dir, IDENTITY_ANY, proto, port, mask);
	__u8 d = policy_lookup(ep_id, dir, IDENTITY_ANY, 0, port, mask);

	if (a == VERDICT_DENY || b == VERDICT_DENY || c == VERDICT_DENY || d == VERDICT_DENY)
		return REASON_POLICY_DENY;
	if (a == VERDICT_ALLOW || b == VERDICT_ALLOW || c == VERDICT_ALLOW || d == VERDICT_ALLOW)
		return REASON_NONE;
	return enforced ? REASON_POLICY_DEFAULT : REASON_NONE;
}
