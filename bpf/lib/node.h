/* Agent-to-agent control traffic. The agents of two mesh nodes talk on
 * their nodes' own mesh addresses: the agent-to-agent API (`meshctl observe
 * --all-nodes`, `status --all`, key rotation), gossip and health probes. A
 * node's mesh address is also its host endpoint, which user policy may
 * isolate (a VM selected by its labels); without an exception such a
 * policy would cut the node off from the other agents, and a policy cannot
 * name "the other nodes" (their addresses carry their own labels).
 *
 * So a new connection on the mesh device passes, whatever the policy, when
 * the peer address is another node's own mesh address (IPCACHE_F_NODE, set
 * by the agent from the node records), the local end is the host endpoint,
 * and the destination port is one of the agents' control ports for its
 * protocol. The tunnel vouches for the peer: a packet on the WireGuard
 * device passed its allowed-IPs check, so its source is an address the
 * sending node's key owns, and only a node's own mesh address carries the
 * flag (never a workload's). Everything else, including other ports of the
 * same two addresses, is judged by policy. Replies pass by conntrack. */
#pragma once

#include "maps.h"
#include "config.h"

/* node_control_port: whether f's destination port is an agent control
 * port of f's protocol. */
static __always_inline bool node_control_port(const struct flow *f)
{
	switch (f->proto) {
	case PROTO_TCP:
		return f->dport == node_port_api || f->dport == node_port_gossip;
	case PROTO_UDP:
		return f->dport == node_port_gossip || f->dport == node_port_probe;
	}
	return false;
}

/* node_control: whether a new connection judged on the mesh device (l3)
 * for the host endpoint is control traffic between two nodes' own mesh
 * addresses; peer_flags are the peer address's ipcache flags. */
static __always_inline bool node_control(const struct flow *f, bool l3, __u32 peer_flags)
{
	return l3 && (peer_flags & IPCACHE_F_NODE) && node_control_port(f);
}
