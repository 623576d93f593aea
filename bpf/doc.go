// Package bpf is Weft's eBPF datapath: the programs that enforce
// identity-aware policy on a node, the maps they read, and the Go side that
// loads, pins, attaches and updates them and reads their events and counters.
//
// The programs sit on the host end of each workload's veth (L2), on the
// node's WireGuard or TUN device (L3, for the node's own host endpoint) and
// on the ingress of its underlay interfaces, where they drop packets
// carrying mesh addresses (mesh traffic travels only inside WireGuard) and,
// in strict mode, plaintext from other mesh nodes. A mesh source is
// believed only from the WireGuard device or from the veth of the endpoint
// owning it ([ReasonSpoofedSource]).
// Maps and links are pinned under /sys/fs/bpf/weft/<scope>, so an agent can
// exit and start again without interrupting traffic: [Open] re-opens what is
// pinned and [Datapath.AttachWorkload] replaces the running program in place.
//
// The package knows nothing of etcd or of policy documents: the agent turns
// those into [PolicyKey] entries, ipcache prefixes and endpoints.
// docs/datapath.md describes the maps, programs and drop reasons for users.
package bpf
