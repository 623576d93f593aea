package kvstore_test

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/weftmesh/weft/kvstore"
	"github.com/weftmesh/weft/kvstore/kvstoretest"
)

// A Kubernetes node's podCIDR becomes its CIDR only inside the cluster's
// pod CIDRs and only when nobody holds an overlapping range; a restart
// claims it again.
func TestClaimNodeCIDR(t *testing.T) {
	c, _ := kvstoretest.New(t)
	ctx := context.Background()
	pfx := netip.MustParsePrefix
	if err := c.PutCluster(ctx, kvstore.Cluster{Name: "k", ID: 3, MeshPool: pfx("100.64.0.0/16"), PodCIDRs: []netip.Prefix{pfx("100.96.0.0/16")}}); err != nil {
		t.Fatal(err)
	}
	got, err := c.ClaimNodeCIDR(ctx, "k", "n1", pfx("100.96.1.0/24"))
	if err != nil || got != pfx("100.96.1.0/24") {
		t.Fatalf("claim = %v, %v", got, err)
	}
	if got, err := c.ClaimNodeCIDR(ctx, "k", "n1", pfx("100.96.1.0/24")); err != nil || got != pfx("100.96.1.0/24") {
		t.Fatalf("claiming again (a restart) = %v, %v; want the same CIDR", got, err)
	}
	for _, tc := range []struct {
		node, cidr string
		err        error
		say        string
	}{
		{"n2", "100.96.1.0/24", kvstore.ErrOverlap, "held by k/n1"},
		{"n2", "100.96.1.128/25", kvstore.ErrOverlap, "held by k/n1"},
		{"n2", "100.96.0.0/23", kvstore.ErrOverlap, "held by k/n1"},
		{"n2", "100.64.5.0/24", kvstore.ErrInvalidConfig, "not inside cluster \"k\"'s pod CIDRs"},
		{"n2", "100.96.2.1/24", kvstore.ErrInvalidConfig, "host bits set"},
	} {
		_, err := c.ClaimNodeCIDR(ctx, "k", tc.node, pfx(tc.cidr))
		if !errors.Is(err, tc.err) || !strings.Contains(err.Error(), tc.say) {
			t.Errorf("claim %s by %s = %v; want %v saying %q", tc.cidr, tc.node, err, tc.err, tc.say)
		}
	}
	if got, err := c.ClaimNodeCIDR(ctx, "k", "n2", pfx("100.96.2.0/24")); err != nil || got != pfx("100.96.2.0/24") {
		t.Fatalf("a free range = %v, %v", got, err)
	}
	if err := c.ReleaseNodeCIDR(ctx, "k", "n1", pfx("100.96.1.0/24")); err != nil {
		t.Fatal(err)
	}
	if _, err := c.ClaimNodeCIDR(ctx, "k", "n3", pfx("100.96.1.0/24")); err != nil {
		t.Fatalf("a released range is free again: %v", err)
	}
}
