package netpol

import (
	"errors"
	"fmt"

	"github.com/weftmesh/weft/policy"
)

// WeftPolicyName is the name of the Weft policy a WeftPolicy object (which
// is cluster-scoped) becomes: weftpolicy:<name>.
func WeftPolicyName(name string) string { return policy.ImportedName(OriginWeftPolicy, name) }

// FromWeftPolicy turns a WeftPolicy object, given its metadata.name and
// the JSON of its .spec, into a Weft policy. The spec is a Weft policy's
// spec and is checked by Weft's own parser, with the messages of `meshctl
// policy apply`; an error is a *policy.ParseError naming "WeftPolicy
// <name>". Positions are left out, since the JSON the agent reads from the
// API server is not what the user wrote.
func FromWeftPolicy(name string, spec []byte) (*policy.Policy, error) {
	where := "WeftPolicy " + name
	p, err := policy.ParseSpec(where, WeftPolicyName(name), spec)
	if err != nil {
		var pe *policy.ParseError
		if errors.As(err, &pe) {
			pe.Line, pe.Column = 0, 0
			return nil, pe
		}
		return nil, fmt.Errorf("%s: %w", where, err)
	}
	p.Description = where
	p.File, p.Line = "", 0
	for _, rs := range [][]policy.Rule{p.Ingress, p.Egress, p.IngressDeny, p.EgressDeny} {
		for i := range rs {
			rs[i].Line = 0
		}
	}
	return p, nil
}
