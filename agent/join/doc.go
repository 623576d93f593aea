// Package join puts a new node into a mesh with one string. The join
// service, next to the mesh CA, takes a join token and a certificate
// request and answers with what the node needs to start its agent: a
// client certificate signed by the mesh CA, the CA itself, the etcd
// endpoints, the node's cluster and labels. The token carries the
// service's address and the CA's SHA-256, so the joining node trusts
// nothing it has not been told by whoever made the token: a service that
// presents another CA is refused.
//
// Tokens are checked through the small TokenStore interface (the agent
// backs it with kvstore); expired, revoked, used-up and unknown tokens are
// refused with errors that say which.
package join
