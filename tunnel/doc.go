// Package tunnel keeps one WireGuard interface per node in line with the
// mesh: it creates the device (kernel WireGuard when the kernel has it,
// otherwise embedded userspace wireguard-go run by a supervised helper
// process that outlives agent restarts), owns the node's private key,
// applies only the difference between the desired peers and the device's
// actual peers through wgctrl, and keeps a route through the device for every
// allowed prefix.
//
// The package knows nothing of etcd: the agent turns node records into
// []Peer and calls Reconcile.
package tunnel
