// Package flowcollect turns datapath events into flow records for the
// agent: it reads the datapath's event stream, enriches each event with the
// identity, labels and names of both ends and stores the record in a
// flows.Ring.
//
// It is separate from package flows because it depends on package bpf (the
// event type, and through it cilium/ebpf and the compiled datapath), while
// flows is what meshctl uses to filter and merge flow streams: keeping the
// two apart keeps the datapath out of the CLI binary (see
// internal/deptest).
package flowcollect
