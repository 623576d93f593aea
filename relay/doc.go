// Package relay forwards WireGuard packets between mesh nodes that cannot
// reach each other directly (two symmetric NATs, a firewall that cut their
// path). Any mesh node with a reachable address can run a Server; every
// node runs a Client (docs/nat.md).
//
// # Protocol
//
// UDP; every message starts with a 4-byte header [type, version 1, 0, 0]:
//
//	REGISTER   client → relay  0xF1, ticket (16 bytes)
//	REGISTERED relay → client  0xF2, the client's ID (8 bytes)
//	KEEPALIVE  client → relay  0xF3, the client's ID; the relay echoes it
//	DATA       both ways       0xF4, an ID (8 bytes), a WireGuard message
//	UNKNOWN    relay → client  0xF5: no registration for this address
//
// A node gets a ticket from the relay's agent over the agent-to-agent API,
// which authenticates it (mTLS with its node certificate, from its own mesh
// address): Server.Ticket binds the ticket to the node's ID. REGISTER with
// an unused, unexpired ticket binds that ID to the datagram's source
// address; from then on the relay accepts DATA from that address only. In
// DATA from a client the ID is the destination; the relay rewrites it to the
// source's ID and sends it to the destination's registered address.
//
// # What the relay sees
//
// Only WireGuard messages (it forwards nothing else: the payload must have
// a WireGuard message's type and size), which are ciphertext under keys the
// relay never holds. It learns which nodes talk through it, when and how
// much. Each registered node's traffic is rate limited; strangers' datagrams
// are dropped and counted, and answered at most with a 4-byte UNKNOWN,
// itself rate limited, so the relay is no amplifier.
package relay
