// Package policy parses Weft policy documents, validates them, and compiles
// them into datapath entries for each local endpoint, incrementally. It is
// pure Go: it knows nothing of etcd or the kernel; the agent feeds it
// policies and identities and hands the entries to the eBPF loader.
//
// # Semantics
//
// Kubernetes NetworkPolicy plus explicit deny. Per direction an endpoint is
// open until a policy with that direction's allow section (`ingress`,
// `egress`; an empty list included) selects it; then it is deny-by-default
// and the union of the allow rules opens it. Deny rules (`ingressDeny`,
// `egressDeny`) always win, and a policy with only deny sections does not
// isolate. The user reference is docs/policy.md.
//
// # Datapath contract
//
// Compilation yields an EndpointPolicy: two enforcement flags and a map
// from Key (direction, peer identity or 0 for any, protocol or 0 for any,
// port prefix) to Allow or Deny. The datapath evaluates a packet with up to
// four longest-prefix-match lookups on the port — (identity, protocol),
// (identity, any protocol), (any identity, protocol), (any, any) — and
// denies if any lookup's longest match is Deny, else allows if any is
// Allow, else applies the direction's default (deny when enforced, allow
// when not). EndpointPolicy.Verdict implements exactly this and is the
// reference for the eBPF code. ICMP is looked up with port 0.
//
// Port ranges become aligned power-of-two prefixes. For deny to win under
// longest-prefix matching, the compiler writes every allow prefix that lies
// inside a deny prefix of the same (direction, identity, protocol) as Deny;
// across the four lookups no rewriting is needed, since any Deny wins.
// Allow entries are only written for an enforced direction (elsewhere the
// default already allows).
//
// # Peers and identities
//
// The identity table maps numbers to labels. Reserved numbers are classified
// by number (host, world, remote-node, others); identities carrying a
// `cidr:<prefix>` label are CIDR identities (part of world); every other
// identity is a mesh endpoint. Label selectors match endpoints only; `{}`
// is every endpoint. Entities: host, remote-node, world (world and every
// CIDR identity), mesh (endpoints, host, remote-node and the other reserved
// identities except world), all (identity 0). A CIDR peer matches CIDR
// identities whose prefix lies inside it and not inside an except; a /0 peer
// also matches world. ReferencedCIDRs lists the prefixes the agent must
// give identities to.
//
// # Named ports
//
// A port entry may name a port (`port: http`) instead of numbering it.
// As in Kubernetes, the name is resolved against the destination: in an
// ingress or ingressDeny rule against the local endpoint's named ports
// (SetEndpointNamedPorts), in an egress or egressDeny rule against the
// peer identity's (SetIdentityNamedPorts: the union over the endpoints
// with that identity), with the entry's protocol (any for ANY). What a
// name resolves to becomes ordinary per-identity entries, so the datapath
// never sees names; a name that resolves to nothing matches nothing, and
// an egress rule with a name and no peers writes an entry for each
// identity that has the name (none for the world). A change of named
// ports recomputes only the endpoint, or only that identity's entries.
//
// # Names
//
// A stored policy's name follows the mesh's name rule (ValidateName). A
// policy imported from elsewhere (policy/netpol: Kubernetes NetworkPolicy
// and WeftPolicy objects) is named "<origin>:<parts>" (ImportedName),
// which no stored name can be; the compiler holds both kinds.
package policy
