/* The datapath's maps. Sizes here are defaults for the loader; the Go side
 * sets max_entries from its configuration before loading, and pins every
 * map so a restarted agent finds the same state. */
#pragma once

#include "common.h"

/* ipcache: peer address prefix -> identity. One trie for both families:
 * IPv4 prefixes are stored IPv4-mapped, so a /24 is prefixlen 96+24. */
struct ipcache_key {
	__u32 prefixlen;
	__u8 addr[16];
};

struct ipcache_value {
	__u32 identity;
	__u32 flags; /* IPCACHE_F_* */
};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct ipcache_key);
	__type(value, struct ipcache_value);
	__uint(max_entries, 524288);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} ipcache SEC(".maps");

/* endpoints: a local endpoint's address -> who it is and which directions
 * are deny-by-default. */
struct endpoint_key {
	__u8 addr[16];
};

struct endpoint_value {
	__u32 ep_id;
	__u32 identity;
	__u32 flags;   /* EP_F_* */
	__u32 ifindex; /* host end of the workload's veth; 0: none (the host endpoint) */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct endpoint_key);
	__type(value, struct endpoint_value);
	__uint(max_entries, 4096);
} endpoints SEC(".maps");

/* settings: what the programs learn after they are loaded (the agent loads
 * them before its tunnel device exists). One entry, written by the agent. */
struct settings {
	__u32 wg_ifindex; /* the node's WireGuard/TUN device: 0 until attached */
	__u32 flags;      /* SETTINGS_F_* */
	__u16 wg_port;    /* the node's WireGuard listen port (host order) */
	__u8 pad[6];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct settings);
	__uint(max_entries, 1);
} settings SEC(".maps");

/* underlay_nodes: the other mesh nodes' underlay addresses, for strict
 * mode (IPv4-mapped like every address here). */
struct underlay_key {
	__u8 addr[16];
};

struct underlay_value {
	__u32 flags; /* unused yet */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct underlay_key);
	__type(value, struct underlay_value);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} underlay_nodes SEC(".maps");

/* policy: per endpoint and direction, (peer identity, protocol, port
 * prefix) -> verdict. A hash keyed by the masked port and its prefix length,
 * probed longest prefix first, gives a longest-prefix match whose cost does
 * not grow with the number of entries: the probes are limited to the prefix
 * lengths the endpoint uses (policy_meta). */
struct policy_key {
	__u32 ep_id;
	__u32 identity;
	__u8 dir;
	__u8 proto;
	__be16 port; /* the leading prefixlen bits; the rest zero */
	__u8 prefixlen;
	__u8 pad[3];
};

struct policy_value {
	__u8 verdict;
	__u8 pad[3];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct policy_key);
	__type(value, struct policy_value);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} policy SEC(".maps");

/* policy_meta: per endpoint, bit n set when it has entries with an n-bit
 * port prefix (n = 0..16). Bits are only ever added while entries exist. */
struct policy_meta {
	__u32 prefix_mask;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct policy_meta);
	__uint(max_entries, 4096);
} policy_meta SEC(".maps");

/* ct: connection tracking. The key is the tuple as the first packet of the
 * connection carried it, plus the policy direction that admitted it, so a
 * connection between two local endpoints is judged once per side. */
struct ct_key {
	__u8 saddr[16];
	__u8 daddr[16];
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 dir;
	__u8 pad[2];
};

#define CT_SYN_SENT 1
#define CT_ESTABLISHED 2
#define CT_CLOSING 3

struct ct_entry {
	__u64 expires; /* bpf_ktime_get_ns() deadline */
	__u32 ep_id;
	__u32 peer_identity;
	__u8 state;
	__u8 fin_seen; /* bit 0: original direction, bit 1: reply */
	__u8 pad[6];
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct ct_key);
	__type(value, struct ct_entry);
	__uint(max_entries, 131072);
} ct SEC(".maps");

/* events: flow records for observers (drops, new connections). */
struct event {
	__u64 ts; /* bpf_ktime_get_ns() */
	__u32 ep_id;
	__u32 src_identity;
	__u32 dst_identity;
	__u32 ifindex;
	__u32 len;
	__u8 type;   /* EVENT_* */
	__u8 reason; /* REASON_* */
	__u8 dir;
	__u8 proto;
	__u8 saddr[16];
	__u8 daddr[16];
	__u16 sport;
	__u16 dport;
	__u8 l3;
	__u8 tcp_flags;
	__u8 family;
	__u8 flags; /* EVENT_F_* */
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
} events SEC(".maps");

/* metrics: per-CPU packet and byte counters. */
struct metric_value {
	__u64 packets;
	__u64 bytes;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct metric_value);
	__uint(max_entries, METRIC_ENTRIES);
} metrics SEC(".maps");

/* drop_limit: per-CPU token bucket for drop events. */
struct rate_state {
	__u64 last;
	__u64 tokens;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct rate_state);
	__uint(max_entries, 1);
} drop_limit SEC(".maps");
