// Package spec validates what a user asks Weft for, apart from how it was
// asked: meshctl's flags and the Terraform provider's attributes go
// through the same checks and get the same messages.
package spec

import (
	"fmt"
	"net/netip"
	"reflect"
	"strings"
	"time"

	"github.com/weftmesh/weft/agent/api"
	"github.com/weftmesh/weft/agent/config"
	"github.com/weftmesh/weft/identity"
	"github.com/weftmesh/weft/kvstore/grant"
	"github.com/weftmesh/weft/policy"
)

// MeshRangeV4 is where a cluster's IPv4 mesh pool lies (kvstore.MeshRangeV4;
// clients talk to the agent, not to etcd, so they do not import kvstore).
var MeshRangeV4 = netip.MustParsePrefix("100.64.0.0/10")

// Token lifetimes: long enough to provision a fleet from cloud-init, short
// enough that a token in a shell history is soon worthless.
const (
	MinTokenTTL     = time.Minute
	MaxTokenTTL     = 30 * 24 * time.Hour
	DefaultTokenTTL = time.Hour
	// MaxTokenUses bounds a reusable token.
	MaxTokenUses = 10000
)

// FieldError is a bad value of one field. Field is meshctl's flag name
// (cluster-id); the provider names the attribute with - turned into _.
// Msg says what is wrong without the field's name, Error() is the text
// meshctl prints.
type FieldError struct {
	Field string
	Msg   string
	// text is the whole message as meshctl words it.
	text string
}

func (e *FieldError) Error() string { return e.text }

// Attribute is the field's Terraform attribute name (cluster_id).
func (e *FieldError) Attribute() string { return strings.ReplaceAll(e.Field, "-", "_") }

// colon is a FieldError worded "--field: msg".
func colon(field, msg string) *FieldError {
	return &FieldError{Field: field, Msg: msg, text: "--" + field + ": " + msg}
}

// spaced is a FieldError worded "--field msg" (msg starts with the value
// or a verb: "--ttl 1s is out of range").
func spaced(field, msg string) *FieldError {
	return &FieldError{Field: field, Msg: msg, text: "--" + field + " " + msg}
}

// Token is a join token request as the user wrote it. Nil pointers are
// fields left out.
type Token struct {
	Cluster   string
	ClusterID *int
	MeshPool  *string
	Labels    map[string]string
	// LabelList is meshctl's form of the labels, "k=v,k2=v2"; it is
	// parsed when Labels is nil.
	LabelList   string
	AllowLabels []string
	PodCIDRs    []string
	TTL         time.Duration
	// Reusable lets MaxUses machines join; without it MaxUses must be nil.
	Reusable bool
	MaxUses  *int
}

// TokenRequest validates t into an API request, checking the fields in
// meshctl's order; the first bad one is a *FieldError.
func TokenRequest(t Token) (api.TokenRequest, error) {
	req := api.TokenRequest{Cluster: t.Cluster, MaxUses: 1}
	if err := ClusterName(t.Cluster, true); err != nil {
		return req, err
	}
	if t.ClusterID != nil {
		id := *t.ClusterID
		if id < 1 || id > identity.MaxClusterID {
			return req, spaced("cluster-id", fmt.Sprintf("%d is out of range: use 1..%d (or leave it out: the lowest free id)", id, identity.MaxClusterID))
		}
		req.ClusterID = id
	}
	if t.MeshPool != nil {
		p, err := netip.ParsePrefix(strings.TrimSpace(*t.MeshPool))
		if err != nil || p != p.Masked() || !MeshRangeV4.Contains(p.Addr()) || p.Bits() < MeshRangeV4.Bits() {
			return req, colon("mesh-pool", fmt.Sprintf("%q is not a CIDR in canonical form inside %s (e.g. 100.65.0.0/16; or leave it out: the first free /16)", *t.MeshPool, MeshRangeV4))
		}
		req.MeshPool = p.String()
	}
	if t.Labels == nil && t.LabelList != "" {
		m, err := config.ParseLabels(t.LabelList)
		if err != nil {
			return req, colon("labels", err.Error())
		}
		t.Labels = m
	}
	if len(t.Labels) > 0 {
		if err := config.ValidateLabels(t.Labels); err != nil {
			return req, colon("labels", err.Error())
		}
		req.Labels = t.Labels
	}
	if len(t.AllowLabels) > 0 {
		allow, err := grant.Parse(t.AllowLabels)
		if err != nil {
			return req, colon("allow-labels", err.Error())
		}
		req.AllowLabels = grant.Strings(allow)
	}
	for _, x := range t.PodCIDRs {
		p, err := netip.ParsePrefix(strings.TrimSpace(x))
		if err != nil || p != p.Masked() {
			return req, colon("pod-cidrs", fmt.Sprintf("%q is not a CIDR in canonical form (e.g. 100.96.0.0/16, the Kubernetes cluster CIDR)", x))
		}
		req.PodCIDRs = append(req.PodCIDRs, p.String())
	}
	if err := TokenTTL(t.TTL); err != nil {
		return req, err
	}
	req.TTL = api.Duration(t.TTL)
	switch {
	case t.Reusable && t.MaxUses == nil:
		return req, spaced("reusable", "needs --max-uses N: how many machines may join with the token")
	case !t.Reusable && t.MaxUses != nil:
		return req, spaced("max-uses", "needs --reusable (a token without it is single-use)")
	case t.Reusable && (*t.MaxUses < 1 || *t.MaxUses > MaxTokenUses):
		return req, spaced("max-uses", fmt.Sprintf("%d is out of range: use 1 to %d", *t.MaxUses, MaxTokenUses))
	case t.Reusable:
		req.MaxUses = *t.MaxUses
	}
	return req, nil
}

// TokenTTL checks a token's lifetime (join or cluster token).
func TokenTTL(ttl time.Duration) error {
	if ttl < MinTokenTTL || ttl > MaxTokenTTL {
		return spaced("ttl", fmt.Sprintf("%s is out of range: use 1m to 720h", ttl))
	}
	return nil
}

// ParseTTL reads a lifetime written as a Go duration ("1h", "30m") and
// checks its range.
func ParseTTL(s string) (time.Duration, error) {
	d, err := time.ParseDuration(strings.TrimSpace(s))
	if err != nil {
		return 0, colon("ttl", fmt.Sprintf("%q is not a duration (examples: 30m, 1h, 24h)", s))
	}
	return d, TokenTTL(d)
}

// ClusterName checks a cluster name (config.ValidateName); empty is
// allowed when optional (the agent's own cluster).
func ClusterName(name string, optional bool) error {
	if name == "" && optional {
		return nil
	}
	if err := config.ValidateName("cluster", name); err != nil {
		return colon("cluster", err.Error())
	}
	return nil
}

// Policy parses a document that must hold exactly one policy, named name
// when name is not empty. Errors are those of 'meshctl policy apply'
// (file:line: reason), file naming where the document came from.
func Policy(file, name, document string) (*policy.Policy, error) {
	ps, err := policy.Parse(file, []byte(document))
	if err != nil {
		return nil, err
	}
	if len(ps) != 1 {
		return nil, fmt.Errorf("%s: holds %d policy documents: give exactly one (one resource per policy)", file, len(ps))
	}
	if name != "" && ps[0].Name != name {
		return nil, fmt.Errorf("%s: the document's metadata.name is %q, not %q: the two must be the same", file, ps[0].Name, name)
	}
	return ps[0], nil
}

// SamePolicy reports whether two parsed policies say the same thing, apart
// from how their documents were written (layout, quoting, YAML or JSON,
// comments, where they came from).
func SamePolicy(a, b *policy.Policy) bool {
	return reflect.DeepEqual(bare(a), bare(b))
}

// bare is p without what depends on the document's text.
func bare(p *policy.Policy) policy.Policy {
	q := *p
	q.File, q.Line, q.Source, q.SourceLine = "", 0, "", 0
	for _, rules := range []*[]policy.Rule{&q.Ingress, &q.Egress, &q.IngressDeny, &q.EgressDeny} {
		if *rules == nil {
			continue
		}
		rs := make([]policy.Rule, len(*rules))
		copy(rs, *rules)
		for i := range rs {
			rs[i].Line = 0
		}
		*rules = rs
	}
	return q
}

// PolicyName checks a policy's name (what import takes).
func PolicyName(name string) error { return policy.ValidateName(name) }
