// Package deptest holds no code: its test checks the module's import graph
// against the layering of docs (DESIGN.md, "Layout"): which packages may
// reach etcd, the eBPF library, netlink and WireGuard. A rule broken by a
// new import fails `go test ./...` with the chain of imports that brought
// the dependency in, so the fix (cut that edge, or move the code) is
// obvious. The idea is tailscale's tstest/deptest.
package deptest
