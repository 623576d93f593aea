package kvstore

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"

	"github.com/weftmesh/weft/identity"
	"github.com/weftmesh/weft/kvstore/grant"
)

// Grant is grants/<cluster>/<node>: the labels the node's join token
// allows it to publish endpoints with (kvstore/grant's patterns). The join
// service (admin) writes it when it admits the node; nodes may read it but
// not write it, so a node cannot widen its own grant.
type Grant struct {
	Version     int      `json:"version"`
	Cluster     string   `json:"cluster"`
	Node        string   `json:"node"`
	AllowLabels []string `json:"allowLabels"`
	TokenID     string   `json:"tokenID,omitempty"`
	// CertSerials are the hex serial numbers of the certificates the join
	// service issued the node (the newest last, at most MaxCertSerials), so
	// that a revocation can name them.
	CertSerials []string `json:"certSerials,omitempty"`
	// PodCIDRs are the ranges the node may claim its CIDR from (a
	// Kubernetes node's podCIDR; the token's PodCIDRs).
	PodCIDRs []netip.Prefix `json:"podCIDRs,omitempty"`
}

// MaxCertSerials bounds Grant.CertSerials; older serials are dropped.
const MaxCertSerials = 8

func (*Grant) recordKind() string   { return "grant" }
func (g *Grant) versionField() *int { return &g.Version }

// Key returns grants/<cluster>/<node>.
func (g Grant) Key() string { return GrantKey(g.Cluster, g.Node) }

// Validate checks the names and the patterns.
func (g Grant) Validate() error {
	if err := ValidateName("cluster", g.Cluster); err != nil {
		return fmt.Errorf("%w: grant: %w", ErrInvalidRecord, err)
	}
	if err := ValidateName("node", g.Node); err != nil {
		return fmt.Errorf("%w: grant: %w", ErrInvalidRecord, err)
	}
	if _, err := grant.Parse(g.AllowLabels); err != nil {
		return invalid("grant", "%s/%s: %v", g.Cluster, g.Node, err)
	}
	if len(g.CertSerials) > MaxCertSerials {
		return invalid("grant", "%s/%s: %d certificate serials, at most %d", g.Cluster, g.Node, len(g.CertSerials), MaxCertSerials)
	}
	for i, p := range g.PodCIDRs {
		if err := canonicalPrefix(p); err != nil {
			return invalid("grant", "%s/%s: podCIDRs[%d]: %v", g.Cluster, g.Node, i, err)
		}
	}
	for i, s := range g.CertSerials {
		if !isHexSerial(s) {
			return invalid("grant", "%s/%s: certSerials[%d] %q is not a lower-case hex serial number", g.Cluster, g.Node, i, s)
		}
	}
	return nil
}

// Allows reports whether the grant lets its node publish labels (nil) or
// why not (wrapping grant.ErrNotAllowed).
func (g Grant) Allows(labels []string) error {
	ps, err := grant.Parse(g.AllowLabels)
	if err != nil {
		return err
	}
	return grant.Allows(ps, g.Cluster, labels)
}

// DecodeGrant decodes a grants/ value.
func DecodeGrant(data []byte) (Grant, error) { return decode[Grant](data) }

// PutGrant writes g (admin only: node roles may read grants/, not write).
func (c *Client) PutGrant(ctx context.Context, g Grant) error {
	if err := g.Validate(); err != nil {
		return err
	}
	return c.Put(ctx, g.Key(), &g)
}

// GetGrant reads grants/<cluster>/<node>; ErrNotFound when the node has
// none (it joined before grants existed, or is the seed).
func (c *Client) GetGrant(ctx context.Context, cluster, node string) (Grant, error) {
	if err := ValidateName("cluster", cluster); err != nil {
		return Grant{}, err
	}
	if err := ValidateName("node", node); err != nil {
		return Grant{}, err
	}
	g, _, err := Get(ctx, c, GrantKey(cluster, node), DecodeGrant)
	return g, err
}

// GrantDecoder decodes a grant and checks its key, so a grant cannot claim
// to be another node's.
func GrantDecoder(key string, data []byte) (Grant, error) {
	g, err := DecodeGrant(data)
	if err != nil {
		return g, err
	}
	if want := g.Key(); key != want {
		return g, fmt.Errorf("%w: grant for %s/%s stored at %s (want %s)", ErrInvalidRecord, g.Cluster, g.Node, key, want)
	}
	return g, nil
}

// GrantCache mirrors grants/ so that a reader can check every endpoint
// record against its publishing node's grant without a round trip (the
// ipcache reconciler, next to its CIDR ownership check).
type GrantCache struct {
	c *Cache[Grant]
}

// NewGrantCache makes the cache; call Run, and wait for Synced before
// trusting Allows (before the first listing every node looks grantless).
func NewGrantCache(src Source, onEvent func(Event[Grant]), log *slog.Logger) (*GrantCache, error) {
	c, err := NewCache(src, CacheConfig[Grant]{Name: "grants", Prefix: GrantsPrefix, Decode: GrantDecoder, OnEvent: onEvent, Logger: log})
	if err != nil {
		return nil, err
	}
	return &GrantCache{c: c}, nil
}

// Run feeds the cache until ctx ends.
func (g *GrantCache) Run(ctx context.Context) error { return g.c.Run(ctx) }

// Synced is closed after the first listing.
func (g *GrantCache) Synced() <-chan struct{} { return g.c.Synced() }

// Allows reports whether node of cluster may publish an endpoint with
// labels: nil when its grant allows them, or when it has no grant (a node
// joined before grants existed, or the seed, which holds the admin
// credential anyway); else an error wrapping grant.ErrNotAllowed that names
// the label and the grant.
func (g *GrantCache) Allows(cluster, node string, labels []string) error {
	if ValidateName("cluster", cluster) != nil || ValidateName("node", node) != nil {
		return fmt.Errorf("%w: %q/%q is not a node name", grant.ErrNotAllowed, cluster, node)
	}
	gr, ok := g.c.Get(GrantKey(cluster, node))
	if !ok {
		return nil
	}
	return gr.AllowsEndpoint(labels)
}

// AllowsEndpoint reports whether the grant's node may publish an endpoint
// with labels, as GrantCache.Allows judges it once the grant is found.
func (g Grant) AllowsEndpoint(labels []string) error {
	// Namespace labels come only from Kubernetes nodes (their token had
	// --pod-cidrs): a VM publishing one would pass namespace selectors.
	if len(g.PodCIDRs) == 0 {
		for _, s := range labels {
			if l, err := identity.ParseLabel(s, ""); err == nil && identity.IsK8sNamespaceLabel(l) {
				return fmt.Errorf("%w: label %s is a Kubernetes namespace label and %s/%s is no Kubernetes node (its token had no --pod-cidrs)", grant.ErrNotAllowed, s, g.Cluster, g.Node)
			}
		}
	}
	if err := g.Allows(labels); err != nil {
		return fmt.Errorf("node %s/%s: %w", g.Cluster, g.Node, err)
	}
	return nil
}
