package kvstore

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// IPAM errors.
var (
	ErrOverlap       = errors.New("kvstore: address ranges overlap")
	ErrPoolExhausted = errors.New("kvstore: mesh pool exhausted")
	ErrNotOwner      = errors.New("kvstore: CIDR owned by another node")
)

// PutCluster validates c and writes it, refusing it when its mesh pool or
// pod CIDRs overlap those of another cluster (the error names both). The
// check and the write are one transaction conditioned on no cluster having
// changed since the check, so two clusters added at once cannot overlap.
func (cl *Client) PutCluster(ctx context.Context, c Cluster) error {
	data, err := Encode(&c)
	if err != nil {
		return err
	}
	key := ClusterKey(c.Name)
	for {
		rctx, cancel := cl.reqCtx(ctx)
		resp, err := cl.kv.Get(rctx, ClustersPrefix, clientv3.WithPrefix())
		cancel()
		if err != nil {
			return fmt.Errorf("reading clusters: %w", err)
		}
		mine := append([]netip.Prefix{c.MeshPool}, c.PodCIDRs...)
		for _, kv := range resp.Kvs {
			if string(kv.Key) == key {
				continue
			}
			other, err := DecodeCluster(kv.Value)
			if err != nil {
				cl.log.Warn("skipping value that does not decode", "key", string(kv.Key), "err", err)
				continue
			}
			if other.ID == c.ID {
				return fmt.Errorf("%w: cluster %q and cluster %q both have id %d; pick another id", ErrConflict, c.Name, other.Name, c.ID)
			}
			theirs := append([]netip.Prefix{other.MeshPool}, other.PodCIDRs...)
			for _, a := range mine {
				for _, b := range theirs {
					if a.Overlaps(b) {
						return fmt.Errorf("%w: cluster %q range %s overlaps cluster %q range %s; give each cluster its own ranges", ErrOverlap, c.Name, a, other.Name, b)
					}
				}
			}
		}
		rctx, cancel = cl.reqCtx(ctx)
		tresp, err := cl.kv.Txn(rctx).
			If(clientv3.Compare(clientv3.ModRevision(ClustersPrefix), "<", resp.Header.Revision+1).WithPrefix()).
			Then(clientv3.OpPut(key, string(data))).Commit()
		cancel()
		if err != nil {
			return fmt.Errorf("writing %s: %w", key, err)
		}
		if tresp.Succeeded {
			return nil
		}
		// Another cluster changed meanwhile: check again.
	}
}

// GetCluster reads clusters/<name>.
func (cl *Client) GetCluster(ctx context.Context, name string) (Cluster, error) {
	if err := ValidateName("cluster", name); err != nil {
		return Cluster{}, err
	}
	c, _, err := Get(ctx, cl, ClusterKey(name), DecodeCluster)
	return c, err
}

// AllocateNodeCIDR gives node a CIDR of size bits from its cluster's mesh
// pool. Each candidate is claimed with a create-if-absent transaction, so
// nodes racing for CIDRs never get the same one. A node that already owns a
// CIDR of that size in the pool gets it back (an agent restart keeps its
// addresses). IPAM keys are not leased: a node keeps its CIDR across
// restarts until ReleaseNodeCIDR is called when the node is removed.
func (cl *Client) AllocateNodeCIDR(ctx context.Context, cluster, node string, bits int) (netip.Prefix, error) {
	if err := ValidateName("node", node); err != nil {
		return netip.Prefix{}, err
	}
	c, err := cl.GetCluster(ctx, cluster)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("allocating a CIDR for %s/%s: %w", cluster, node, err)
	}
	pool := c.MeshPool
	if bits < pool.Bits() || bits > pool.Addr().BitLen() {
		return netip.Prefix{}, fmt.Errorf("%w: node CIDR size /%d does not fit cluster %q's pool %s (want /%d to /%d)", ErrInvalidConfig, bits, cluster, pool, pool.Bits(), pool.Addr().BitLen())
	}
	if pool.Addr().BitLen()-bits > 0 && bits-pool.Bits() > 24 {
		return netip.Prefix{}, fmt.Errorf("%w: /%d CIDRs from %s would be more than 2^24 candidates; use larger node CIDRs", ErrInvalidConfig, bits, pool)
	}
	prefix := IPAMClusterPrefix(cluster)
	for {
		rctx, cancel := cl.reqCtx(ctx)
		resp, err := cl.kv.Get(rctx, prefix, clientv3.WithPrefix())
		cancel()
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("reading %s: %w", prefix, err)
		}
		// The key is what a claim creates, so the key's CIDR is what is
		// taken, whatever its value says: a value naming another CIDR
		// would otherwise send every allocation back to a key that
		// already exists, forever.
		var taken []netip.Prefix
		for _, kv := range resp.Kvs {
			pk, err := ParseKey(string(kv.Key))
			if err != nil {
				// Not a canonical CIDR key: no claim can collide with it.
				cl.log.Warn("skipping IPAM key that does not parse", "key", string(kv.Key), "err", err)
				continue
			}
			taken = append(taken, pk.CIDR)
			a, err := DecodeIPAM(kv.Value)
			if err == nil && (a.CIDR != pk.CIDR || a.Cluster != cluster) {
				err = fmt.Errorf("%w: allocation of %s in cluster %q stored at %s", ErrInvalidRecord, a.CIDR, a.Cluster, kv.Key)
			}
			if err != nil {
				cl.log.Warn("IPAM value does not decode or does not match its key; treating its CIDR as taken", "key", string(kv.Key), "err", err)
				continue
			}
			if a.Node == node && a.CIDR.Bits() == bits && pool.Contains(a.CIDR.Addr()) {
				return a.CIDR, nil
			}
		}
		cand, ok := firstFree(pool, bits, taken)
		if !ok {
			return netip.Prefix{}, fmt.Errorf("%w: no free /%d left in cluster %q's pool %s (%d allocated); release unused node CIDRs or enlarge the pool", ErrPoolExhausted, bits, cluster, pool, len(taken))
		}
		data, err := Encode(&IPAMAllocation{Cluster: cluster, Node: node, CIDR: cand})
		if err != nil {
			return netip.Prefix{}, err
		}
		key := IPAMKey(cluster, cand)
		rctx, cancel = cl.reqCtx(ctx)
		tresp, err := cl.kv.Txn(rctx).
			If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
			Then(clientv3.OpPut(key, string(data))).Commit()
		cancel()
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("claiming %s: %w", key, err)
		}
		if tresp.Succeeded {
			return cand, nil
		}
		if ctx.Err() != nil {
			return netip.Prefix{}, ctx.Err()
		}
		// Someone else claimed it first: look again.
	}
}

// firstFree returns the lowest /bits subnet of pool overlapping none of taken.
func firstFree(pool netip.Prefix, bits int, taken []netip.Prefix) (netip.Prefix, bool) {
	// Most allocations have the same size: look those up in a set and
	// check only the odd-sized ones for overlap.
	same := make(map[netip.Prefix]bool, len(taken))
	var other []netip.Prefix
	for _, t := range taken {
		if t.Bits() == bits {
			same[t.Masked()] = true
		} else {
			other = append(other, t)
		}
	}
	cand := netip.PrefixFrom(pool.Addr(), bits)
	for pool.Contains(cand.Addr()) {
		free := !same[cand]
		for _, t := range other {
			if !free {
				break
			}
			if t.Overlaps(cand) {
				free = false
			}
		}
		if free {
			return cand, true
		}
		next, ok := nextPrefix(cand)
		if !ok {
			break
		}
		cand = next
	}
	return netip.Prefix{}, false
}

// nextPrefix returns the prefix of the same size right after p.
func nextPrefix(p netip.Prefix) (netip.Prefix, bool) {
	a := p.Addr().As16()
	bitLen := p.Addr().BitLen()
	// Add 1 at bit position p.Bits()-1 counted in the address's own width.
	bit := p.Bits() - 1 + (128 - bitLen)
	for i := bit; i >= 128-bitLen; i-- {
		byteIdx, mask := i/8, byte(1)<<(7-uint(i%8))
		if a[byteIdx]&mask == 0 {
			a[byteIdx] |= mask
			return netip.PrefixFrom(addrFrom16(a, bitLen), p.Bits()), true
		}
		a[byteIdx] &^= mask
	}
	return netip.Prefix{}, false
}

func addrFrom16(a [16]byte, bitLen int) netip.Addr {
	if bitLen == 32 {
		return netip.AddrFrom4([4]byte(a[12:16]))
	}
	return netip.AddrFrom16(a)
}

// ReleaseNodeCIDR gives cidr back to the pool if node owns it. Releasing a
// CIDR that is not allocated is not an error; releasing another node's is.
func (cl *Client) ReleaseNodeCIDR(ctx context.Context, cluster, node string, cidr netip.Prefix) error {
	if err := ValidateName("node", node); err != nil {
		return err
	}
	if err := ValidateName("cluster", cluster); err != nil {
		return err
	}
	key := IPAMKey(cluster, cidr)
	a, rev, err := Get(ctx, cl, key, DecodeIPAM)
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if a.Node != node {
		return fmt.Errorf("%w: %s in cluster %q belongs to node %q, not %q", ErrNotOwner, cidr, cluster, a.Node, node)
	}
	rctx, cancel := cl.reqCtx(ctx)
	defer cancel()
	tresp, err := cl.kv.Txn(rctx).
		If(clientv3.Compare(clientv3.ModRevision(key), "=", rev)).
		Then(clientv3.OpDelete(key)).Commit()
	if err != nil {
		return fmt.Errorf("releasing %s: %w", key, err)
	}
	if !tresp.Succeeded {
		return fmt.Errorf("%w: %s changed while releasing it; retry", ErrConflict, key)
	}
	return nil
}

// NodeCIDRs lists the CIDRs allocated to node in cluster.
func (cl *Client) NodeCIDRs(ctx context.Context, cluster, node string) ([]netip.Prefix, error) {
	// The key builder panics on a bad name: refuse it as input instead.
	if err := ValidateName("cluster", cluster); err != nil {
		return nil, err
	}
	all, err := List(ctx, cl, IPAMClusterPrefix(cluster), DecodeIPAM)
	if err != nil {
		return nil, err
	}
	var out []netip.Prefix
	for _, a := range all {
		if a.Node == node {
			out = append(out, a.CIDR)
		}
	}
	return out, nil
}

// ClaimNodeCIDR registers cidr, a range the node was given elsewhere (a
// Kubernetes node's podCIDR from the cluster's controller manager), as the
// node's CIDR. It must lie in one of the cluster's pod CIDRs and overlap no
// CIDR any node of any cluster holds; the claim is one create-if-absent
// transaction, so two nodes claiming one range cannot both win. Claiming
// the CIDR the node already holds returns it again (an agent restart).
func (cl *Client) ClaimNodeCIDR(ctx context.Context, cluster, node string, cidr netip.Prefix) (netip.Prefix, error) {
	if err := ValidateName("node", node); err != nil {
		return netip.Prefix{}, err
	}
	if err := canonicalPrefix(cidr); err != nil {
		return netip.Prefix{}, fmt.Errorf("%w: claimed CIDR: %v", ErrInvalidConfig, err)
	}
	c, err := cl.GetCluster(ctx, cluster)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("claiming %s for %s/%s: %w", cidr, cluster, node, err)
	}
	inPod := false
	for _, p := range c.PodCIDRs {
		if p.Bits() <= cidr.Bits() && p.Contains(cidr.Addr()) {
			inPod = true
		}
	}
	if !inPod {
		return netip.Prefix{}, fmt.Errorf("%w: %s is not inside cluster %q's pod CIDRs %v: create the node's token with --pod-cidrs covering the Kubernetes cluster CIDR", ErrInvalidConfig, cidr, cluster, c.PodCIDRs)
	}
	for {
		rctx, cancel := cl.reqCtx(ctx)
		resp, err := cl.kv.Get(rctx, IPAMPrefix, clientv3.WithPrefix())
		cancel()
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("reading %s: %w", IPAMPrefix, err)
		}
		for _, kv := range resp.Kvs {
			pk, err := ParseKey(string(kv.Key))
			if err != nil {
				cl.log.Warn("skipping IPAM key that does not parse", "key", string(kv.Key), "err", err)
				continue
			}
			if !pk.CIDR.Overlaps(cidr) {
				continue
			}
			a, derr := DecodeIPAM(kv.Value)
			if derr == nil && pk.CIDR == cidr && a.CIDR == cidr && a.Cluster == cluster && a.Node == node {
				return cidr, nil
			}
			owner := "a record that does not decode"
			if derr == nil {
				owner = a.Cluster + "/" + a.Node
			}
			return netip.Prefix{}, fmt.Errorf("%w: %s overlaps %s, held by %s: two nodes cannot own one range (is the Kubernetes cluster CIDR shared with another cluster or mesh pool?)", ErrOverlap, cidr, pk.CIDR, owner)
		}
		data, err := Encode(&IPAMAllocation{Cluster: cluster, Node: node, CIDR: cidr})
		if err != nil {
			return netip.Prefix{}, err
		}
		key := IPAMKey(cluster, cidr)
		rctx, cancel = cl.reqCtx(ctx)
		// Conditioned on nothing under ipam/ having changed since the
		// read: an overlapping claim of another size has another key.
		tresp, err := cl.kv.Txn(rctx).
			If(clientv3.Compare(clientv3.ModRevision(IPAMPrefix), "<", resp.Header.Revision+1).WithPrefix()).
			Then(clientv3.OpPut(key, string(data))).Commit()
		cancel()
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("claiming %s: %w", key, err)
		}
		if tresp.Succeeded {
			return cidr, nil
		}
		if ctx.Err() != nil {
			return netip.Prefix{}, ctx.Err()
		}
	}
}
