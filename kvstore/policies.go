package kvstore

import (
	"context"
	"fmt"
)

// PutPolicy validates the record (not the document: the policy package does
// that before calling) and writes policies/<name>.
func (cl *Client) PutPolicy(ctx context.Context, p Policy) error {
	if err := ValidateName("policy", p.Name); err != nil {
		return err
	}
	return cl.Put(ctx, PolicyKey(p.Name), &p)
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
	resp, err := cl.etcd.Delete(rctx, PolicyKey(name))
	if err != nil {
		return fmt.Errorf("deleting policy %s: %w", name, err)
	}
	if resp.Deleted == 0 {
		return fmt.Errorf("%w: policy %s", ErrNotFound, name)
	}
	return nil
}
