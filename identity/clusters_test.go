package identity

import "testing"

func TestClusterRange(t *testing.T) {
	lo, hi, err := ClusterRange(1)
	if err != nil || lo != 65536+256 || hi != 131071 {
		t.Fatalf("cluster 1: %d..%d %v", lo, hi, err)
	}
	lo, hi, err = ClusterRange(MaxClusterID)
	if err != nil || hi >= CIDRIdentityBase || lo.ClusterID() != 4095 || hi.ClusterID() != 4095 {
		t.Fatalf("cluster 4095: %d..%d %v", lo, hi, err)
	}
	for _, bad := range []int{0, -1, 4096} {
		if _, _, err := ClusterRange(bad); err == nil {
			t.Errorf("cluster id %d accepted", bad)
		}
	}
	// Ranges of neighbouring clusters do not touch, and reserved and CIDR
	// identities belong to no cluster.
	_, hi1, _ := ClusterRange(1)
	lo2, _, _ := ClusterRange(2)
	if hi1 >= lo2 || hi1.InCluster(2) || !lo2.InCluster(2) || lo2.InCluster(1) {
		t.Fatalf("ranges overlap: %d %d", hi1, lo2)
	}
	for _, n := range []NumericIdentity{IdentityHost, IdentityRemoteNode, 255, CIDRIdentityBase, CIDRIdentityBase + 5, 65536 + 255} {
		if n.InCluster(1) || (n.ClusterID() != 0 && n != 65536+255) {
			t.Errorf("%d: cluster %d, in cluster 1 %v", n, n.ClusterID(), n.InCluster(1))
		}
	}
}
