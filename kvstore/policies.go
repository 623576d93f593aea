package kvstore

import (
	"context"
	"errors"
	"fmt"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// PutPolicy validates the record (not the document: the policy package does
// that before calling) and writes policies/<name>.
func (cl *Client) PutPolicy(ctx context.Context, p Policy) error {
	if err := ValidateName("policy", p.Name); err != nil {
		return err
	}
	return cl.Put(ctx, PolicyKey(p.Name), &p)
}

// PutPolicies validates every record of ps (not the documents: the policy
// package does that before calling) and writes them all in one transaction:
// a file of several documents is applied entirely or not at all, and
// watchers see all of its policies change at one revision, never half a
// file. If any record is invalid, or a name appears twice, nothing is
// written. etcd bounds one transaction (128 operations and about 1.5 MiB by
// default); a larger batch is refused by etcd, also without writing.
func (cl *Client) PutPolicies(ctx context.Context, ps []Policy) error {
	_, err := cl.PutPoliciesRevision(ctx, ps)
	return err
}

// PutPoliciesRevision is PutPolicies, and returns the revision the
// transaction committed at: every policy of ps has it as its ModRevision,
// and a watcher that has seen it has seen them all. Nothing to write is
// revision 0.
func (cl *Client) PutPoliciesRevision(ctx context.Context, ps []Policy) (int64, error) {
	if len(ps) == 0 {
		return 0, nil
	}
	ops := make([]clientv3.Op, 0, len(ps))
	seen := make(map[string]bool, len(ps))
	for i := range ps {
		p := ps[i] // Encode sets the version: leave the caller's slice alone
		data, err := Encode(&p)
		if err != nil {
			return 0, fmt.Errorf("policy %d of %d: %w", i+1, len(ps), err)
		}
		if seen[p.Name] {
			// etcd refuses a transaction writing one key twice; say why.
			return 0, fmt.Errorf("%w: policy %q given twice; each policy may appear once", ErrInvalidRecord, p.Name)
		}
		seen[p.Name] = true
		ops = append(ops, clientv3.OpPut(PolicyKey(p.Name), string(data)))
	}
	rctx, cancel := cl.reqCtx(ctx)
	defer cancel()
	resp, err := cl.kv.Txn(rctx).Then(ops...).Commit()
	if err != nil {
		if errors.Is(err, rpctypes.ErrTooManyOps) || errors.Is(err, rpctypes.ErrRequestTooLarge) {
			return 0, fmt.Errorf("writing %d policies in one transaction: %w (apply them in smaller files)", len(ps), err)
		}
		return 0, fmt.Errorf("writing %d policies: %w", len(ps), err)
	}
	return resp.Header.Revision, nil
}

// GetPolicy reads policies/<name>.
func (cl *Client) GetPolicy(ctx context.Context, name string) (Policy, error) {
	if err := ValidateName("policy", name); err != nil {
		return Policy{}, err
	}
	p, _, err := Get(ctx, cl, PolicyKey(name), DecodePolicy)
	return p, err
}

// DeletePolicy removes policies/<name>; it reports ErrNotFound when absent
// so `meshctl policy delete` can say so.
func (cl *Client) DeletePolicy(ctx context.Context, name string) error {
	if err := ValidateName("policy", name); err != nil {
		return err
	}
	rctx, cancel := cl.reqCtx(ctx)
	defer cancel()
	resp, err := cl.kv.Delete(rctx, PolicyKey(name))
	if err != nil {
		return fmt.Errorf("deleting policy %s: %w", name, err)
	}
	if resp.Deleted == 0 {
		return fmt.Errorf("%w: policy %s", ErrNotFound, name)
	}
	return nil
}
