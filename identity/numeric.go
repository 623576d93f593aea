package identity

import (
	"fmt"
	"strconv"
)

// NumericIdentity is the number the datapath carries for a label set. The
// same label set has the same number on every node of the mesh.
type NumericIdentity uint32

// Reserved identities (docs/policy.md, "Peers", lists their entities): numbers below MinAllocated are never
// handed out by the allocator.
const (
	// IdentityAny is no identity; in a policy key it means "any peer".
	IdentityAny NumericIdentity = 0
	// IdentityHost is the local node itself.
	IdentityHost NumericIdentity = 1
	// IdentityWorld is any address no node has announced.
	IdentityWorld NumericIdentity = 2
	// IdentityUnmanaged is a local workload Weft does not manage.
	IdentityUnmanaged NumericIdentity = 3
	// IdentityHealth is the agent's health-check endpoint.
	IdentityHealth NumericIdentity = 4
	// IdentityInit is an endpoint whose labels are not known yet.
	IdentityInit NumericIdentity = 5
	// IdentityRemoteNode is another node's own (infrastructure) address.
	IdentityRemoteNode NumericIdentity = 6
	// MaxReserved is the last number kept for reserved identities.
	MaxReserved NumericIdentity = 255
	// MinAllocated is the first number the allocator hands out.
	MinAllocated NumericIdentity = 256
)

var reservedNames = map[NumericIdentity]string{
	IdentityAny:        "any",
	IdentityHost:       "host",
	IdentityWorld:      "world",
	IdentityUnmanaged:  "unmanaged",
	IdentityHealth:     "health",
	IdentityInit:       "init",
	IdentityRemoteNode: "remote-node",
}

// String names reserved identities ("host", "world") and prints other
// numbers in decimal.
func (n NumericIdentity) String() string {
	if s, ok := reservedNames[n]; ok {
		return s
	}
	return strconv.FormatUint(uint64(n), 10)
}

// IsReserved reports whether n is below MinAllocated.
func (n NumericIdentity) IsReserved() bool { return n < MinAllocated }

// ReservedLabels returns the label set of a reserved identity
// (`reserved:<name>`), or false when n is not a named reserved identity.
// Policies select reserved identities through entities, not these labels;
// the labels exist so that every identity, reserved or not, has a set.
func ReservedLabels(n NumericIdentity) (Labels, bool) {
	name, ok := reservedNames[n]
	if !ok || n == IdentityAny {
		return nil, false
	}
	return Labels{{Source: SourceReserved, Key: name}}, true
}

// ReservedIdentities returns every named reserved identity with its labels,
// the base of an identity table before any allocation.
func ReservedIdentities() map[NumericIdentity]Labels {
	out := make(map[NumericIdentity]Labels, len(reservedNames))
	for n := range reservedNames {
		if l, ok := ReservedLabels(n); ok {
			out[n] = l
		}
	}
	return out
}

// LookupReserved returns the reserved identity with the given name
// ("host", "remote-node", ...).
func LookupReserved(name string) (NumericIdentity, error) {
	for n, s := range reservedNames {
		if s == name && n != IdentityAny {
			return n, nil
		}
	}
	return 0, fmt.Errorf("%w: %q is not a reserved identity (host, world, unmanaged, health, init, remote-node)", ErrInvalidLabel, name)
}
