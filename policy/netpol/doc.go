// Package netpol turns the policy objects of Kubernetes into Weft
// policies for the compiler: networking.k8s.io/v1 NetworkPolicy (Translate)
// and Weft's own cluster-scoped WeftPolicy custom resource (FromWeftPolicy,
// whose CRD is deploy/crds/weftpolicies.weft.dev.yaml). It is pure: the
// agent's Kubernetes source watches the objects and feeds the results to
// policy.Compiler next to the policies stored in etcd.
//
// # Names
//
// Every policy the compiler holds has a unique name. A stored policy's
// name follows the mesh's name rule, which has no ':' or '/'. An imported
// one is named `<origin>:<parts>` (policy.ImportedName): a NetworkPolicy
// `netpol:<namespace>/<name>` (Name), a WeftPolicy `weftpolicy:<name>`
// (WeftPolicyName). Kubernetes namespaces and object names have neither
// ':' nor '/', so the three kinds never collide, and within a kind the
// mapping is one-to-one.
//
// # NetworkPolicy semantics
//
// A pod's endpoint carries its labels with the `k8s` source, its namespace
// as k8s:io.kubernetes.pod.namespace and its namespace's labels as
// k8s:io.kubernetes.namespace.labels.<key> (identity.K8sNamespaceKey,
// identity.K8sNamespaceLabelPrefix). Every translated selector uses only
// `k8s:` keys, so it can select pods and never a VM (whose labels are
// `vm:`), a node or the world:
//
//   - spec.podSelector selects the pods of the policy's namespace matching
//     it (`{}`: all of them).
//   - A peer's podSelector alone: pods of the policy's namespace; its
//     namespaceSelector alone: every pod of the matching namespaces (`{}`:
//     every pod of every namespace, still no VM, node or world); both in
//     one peer: pods matching both; several peers: any of them.
//   - A rule with no from/to matches every peer, the world included; a rule
//     with no ports matches every port. Ports: protocol (TCP when absent),
//     number, endPort, or a named port, which the compiler resolves as
//     Kubernetes does (ingress: the selected pod's container ports; egress:
//     the destination pod's).
//   - policyTypes, explicit or defaulted as the API does (Ingress always,
//     Egress when spec.egress has rules): a listed direction is isolated
//     (deny by default) even with no rules; rules of an unlisted direction
//     are ignored.
//   - Kubernetes always allows traffic between a pod and the node it runs
//     on (kubelet probes): every isolated direction gets one more rule,
//     after the object's own, allowing the entity host.
//
// Pods of a namespace are matched in every cluster of the mesh (namespace
// sameness): the labels carry the namespace, not the cluster.
//
// # ipBlock
//
// Kubernetes leaves open whether an ipBlock matches pod addresses. In Weft
// it does not: an ipBlock becomes a CIDR peer, and CIDR peers match only
// addresses outside the mesh (world and CIDR identities). A pod, VM or
// node of the mesh is always known by its identity, whatever block its
// address lies in, so `ipBlock: {cidr: 0.0.0.0/0}` is "the internet", not
// "everything"; to name pods use selectors, to name nodes a WeftPolicy
// with the host or remote-node entity. As Cilium does by default, and unlike the
// upstream e2e tests that allow a server pod by its IP, ipBlock is for
// peers outside the cluster, which is what the Kubernetes API reference
// recommends it for.
package netpol
