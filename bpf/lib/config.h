/* Load-time settings. The Go loader rewrites these constants before the
 * programs are loaded (Config in bpf/config.go); the values here are the
 * documented defaults. */
#pragma once

#include "common.h"

volatile const __u32 ct_timeout_syn = 60;             /* seconds */
volatile const __u32 ct_timeout_tcp = 21600;          /* established TCP */
volatile const __u32 ct_timeout_closing = 10;         /* after FIN both ways or RST */
volatile const __u32 ct_timeout_udp = 60;
volatile const __u32 ct_timeout_icmp = 30;
volatile const __u32 ct_timeout_other = 60;
volatile const __u32 drop_events_per_sec = 100;       /* per CPU; 0: no limit */
volatile const __u32 drop_events_burst = 200;
/* The agents' control ports on their mesh addresses (lib/node.h): the
 * agent-to-agent API (TCP), gossip (TCP and UDP), health probes (UDP). */
volatile const __u16 node_port_api = 51835;
volatile const __u16 node_port_gossip = 51836;
volatile const __u16 node_port_probe = 51837;
