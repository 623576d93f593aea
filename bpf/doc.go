// Package bpf is Weft's eBPF datapath: the programs that enforce
// identity-aware policy on a node, the maps they read, and the Go side that
// loads, pins, attaches and updates them and reads their events and counters.
//
// The programs sit on the host end of each workload's veth (L2) and on the
// node's WireGuard or TUN device (L3, for the node's own host endpoint).
// Maps and links are pinned under /sys/fs/bpf/weft/<scope>, so an agent can
// exit and start again without interrupting traffic: [Open] re-opens what is
// pinned and [Datapath.AttachWorkload] replaces the running program in place.
//
// The package knows nothing of etcd or of policy documents: the agent turns
// those into [PolicyKey] entries, ipcache prefixes and endpoints.
// docs/datapath.md describes the maps, programs and drop reasons for users.
package bpf
