// Package flows turns the datapath's flow events into flow records people
// can read: each event is enriched with the identity, labels and names of
// both ends, kept in a fixed-size ring of the most recent flows, and
// streamed to subscribers through filters. It also merges the streams of
// several nodes into one ordered by time, for `meshctl observe --all-nodes`.
//
// The package knows nothing of etcd or of the kernel: the agent hands it an
// event source (the datapath's ring buffer reader) and a directory of
// endpoints and identities (its caches).
package flows
