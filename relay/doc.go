// Package relay forwards WireGuard packets between mesh nodes that cannot
// reach each other directly (two symmetric NATs, a firewall that cut their
// path). Any mesh node with a reachable address can run a Server; every
// node runs a Client (docs/nat.md).
//
// # Protocol
//
// UDP, integers big-endian; every message starts with a 4-byte header
// [type, version 1, 0, 0]:
//
//	REGISTER   client → relay  0xF1, ticket (16 bytes)           20 bytes
//	REGISTERED relay → client  0xF2, the client's ID (8 bytes)   12 bytes
//	KEEPALIVE  client → relay  0xF3, the client's ID             12 bytes
//	           relay → client  the same message: the ack
//	DATA       both ways       0xF4, an ID, a WireGuard message  12 + payload
//	UNKNOWN    relay → client  0xF5: no registration here        4 bytes
//
// An ID is the first 8 bytes of SHA-256("cluster/node") (NodeID). A node
// gets a ticket from the relay's agent over the agent-to-agent API, which
// authenticates it (mTLS with its node certificate): Server.Ticket binds a
// fresh random ticket to the node's ID for 30 s. REGISTER with an unused,
// unexpired ticket binds that ID to the datagram's source address and port
// (a later REGISTER from elsewhere moves it: a NAT that rebound); the relay
// answers REGISTERED. From then on the relay accepts KEEPALIVE and DATA for
// that ID from that address only, and drops a binding silent for 30 s. In
// DATA from a client the ID is the destination; the relay checks that the
// payload is a WireGuard message (type 1..4, three zero bytes, the size of
// its type: 148, 92, 64, at least 32), takes its length from the sender's
// token bucket, writes the sender's ID over the destination's and sends the
// datagram, otherwise unchanged, to the destination's address. Anything
// else is dropped and counted (ServerStats); KEEPALIVE or DATA from an
// address without a binding is answered UNKNOWN, at most 100 a second in
// all, and never larger than what it answers, so the relay amplifies
// nothing. A REGISTER with a bad ticket gets no answer.
//
// The client re-registers, with a fresh ticket, when the relay says
// UNKNOWN (it restarted, the binding expired or was revoked) or misses
// three keepalives (5 s apart by default, which also keeps the NAT mapping
// towards the relay open).
//
// # The client's local sockets
//
// WireGuard does not speak this protocol: for every relay and peer the
// client opens a UDP socket on loopback (Client.Endpoint) and the agent
// sets it as the peer's WireGuard endpoint. What the device sends there
// goes to the peer through the relay; what comes from the peer through the
// relay reaches the device from that socket, so the device's endpoint
// learning keeps answering through the relay. The client takes relay
// messages only from its relays' addresses, and DATA only from the mesh's
// nodes (Client.SetPeers).
//
// # What the relay sees and can do
//
// Only WireGuard messages between two other nodes, whose keys it never
// holds: ciphertext, and the handshake messages' public fields. It learns
// which nodes talk through it, when and how much, as any router on their
// path would. It cannot read, change or inject traffic, as WireGuard
// authenticates every packet; it can drop it, and the pair then moves to
// another relay. Someone who can forge a registered node's source address
// can spend that node's rate or keep its binding alive, but not get a
// packet accepted by the destination's WireGuard.
//
// # Performance
//
// Both sides move datagrams in batches (recvmmsg/sendmmsg on Linux) and
// with UDP offload: a socket reads with UDP_GRO, so the kernel hands over a
// run of same-sized datagrams (WireGuard sends up to 64 at once with GSO) in
// one read, and a run to one destination leaves as one UDP_SEGMENT send with
// the relay header in each segment. The relay rewrites runs in place; the
// forwarding path allocates nothing and takes a read lock per datagram
// only. BenchmarkRelayForward measures it against BenchmarkDirectUDP.
package relay
