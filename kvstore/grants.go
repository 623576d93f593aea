package kvstore

import (
	"context"
	"fmt"

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
}

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
