// Package flows holds flow records once they exist: a fixed-size ring of
// the most recent flows, streamed to subscribers through filters, and the
// merge of several nodes' streams into one ordered by time, for `meshctl
// observe --all-nodes`.
//
// The package knows nothing of etcd or of the kernel, so meshctl can use it
// without linking the datapath. Turning datapath events into flow records
// (enrichment with identities, labels and names) is package
// agent/flowcollect, which does depend on package bpf.
package flows
