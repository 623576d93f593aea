package kvstore

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Token errors: each tells the joining user something different.
var (
	ErrTokenUnknown = errors.New("kvstore: unknown join token")
	ErrTokenExpired = errors.New("kvstore: join token expired")
	ErrTokenRevoked = errors.New("kvstore: join token revoked")
	ErrTokenUsedUp  = errors.New("kvstore: join token used up")
	// ErrTokenWrongPurpose: a cluster token presented to join a node, or
	// the other way round.
	ErrTokenWrongPurpose = errors.New("kvstore: token made for another purpose")
)

// TokenError is ConsumeToken's refusal of a token: it wraps one of the
// token sentinels and keeps what the person presenting the token is told
// (which token, why, what to do) apart from the sentinel's words, so that
// the join service can pass it on with a code of its own, no text cut.
type TokenError struct {
	err    error
	detail string
}

func (e *TokenError) Error() string {
	if e.detail == "" {
		return e.err.Error()
	}
	return e.err.Error() + ": " + e.detail
}

// Unwrap returns the sentinel: ErrTokenUnknown, ErrTokenExpired,
// ErrTokenRevoked or ErrTokenUsedUp.
func (e *TokenError) Unwrap() error { return e.err }

// Detail is what the presenter is told beyond the sentinel; it is empty
// for an unknown token, so the answer does not confirm which ids exist.
func (e *TokenError) Detail() string { return e.detail }

func tokenErrorf(sentinel error, format string, args ...any) error {
	return &TokenError{err: sentinel, detail: fmt.Sprintf(format, args...)}
}

// TokenSpec describes a token to create.
type TokenSpec struct {
	Cluster string
	Labels  []string
	TTL     time.Duration // how long until it expires
	MaxUses int           // 1 for single use
	// AllowLabels are the label patterns the admitted nodes may publish
	// (kvstore/grant); empty allows every label.
	AllowLabels []string
	// PodCIDRs admits Kubernetes nodes whose podCIDR lies in them.
	PodCIDRs []netip.Prefix
	// Purpose is PurposeJoin (the zero value) or PurposeCluster.
	Purpose string
}

// CreateToken stores a new token and returns it with its secret. Only the
// SHA-256 of the secret is stored: whoever reads etcd cannot join with it.
// The id and secret are random; the caller shows them to the user once.
func (cl *Client) CreateToken(ctx context.Context, spec TokenSpec, now time.Time) (Token, string, error) {
	if spec.TTL <= 0 {
		return Token{}, "", fmt.Errorf("%w: token TTL must be positive (got %s)", ErrInvalidRecord, spec.TTL)
	}
	id, err := randomString(8)
	if err != nil {
		return Token{}, "", err
	}
	raw, err := randomString(32)
	if err != nil {
		return Token{}, "", err
	}
	// The secret ends up in `meshctl join <token>`: URL-safe base64 keeps it
	// one shell word.
	secret := base64.RawURLEncoding.EncodeToString(raw)
	t := Token{
		ID:           "t" + hexLower(id),
		SecretSHA256: hashSecret(secret),
		Created:      now.UTC(),
		Expires:      now.Add(spec.TTL).UTC(),
		Labels:       spec.Labels,
		Cluster:      spec.Cluster,
		MaxUses:      spec.MaxUses,
		AllowLabels:  spec.AllowLabels,
		PodCIDRs:     spec.PodCIDRs,
		Purpose:      spec.Purpose,
	}
	data, err := Encode(&t)
	if err != nil {
		return Token{}, "", err
	}
	key := TokenKey(t.ID)
	rctx, cancel := cl.reqCtx(ctx)
	defer cancel()
	resp, err := cl.kv.Txn(rctx).If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, string(data))).Commit()
	if err != nil {
		return Token{}, "", fmt.Errorf("writing %s: %w", key, err)
	}
	if !resp.Succeeded {
		return Token{}, "", fmt.Errorf("%w: token id %s already exists; try again", ErrConflict, t.ID)
	}
	return t, secret, nil
}

// ConsumeToken checks a presented token and, if it is good, counts one use,
// atomically: the use is written with a transaction on the record's
// modification revision, so two joins racing for the last use cannot both
// win. It returns the token as it is after this use. Its refusals are
// *TokenError. Only join tokens (PurposeJoin) are accepted.
func (cl *Client) ConsumeToken(ctx context.Context, id, secret string, now time.Time) (Token, error) {
	return cl.ConsumeTokenFor(ctx, id, secret, PurposeJoin, now)
}

// ConsumeTokenFor is ConsumeToken for a token of purpose: a token made for
// another purpose is refused (ErrTokenWrongPurpose) without a use counted,
// so a cluster token pasted into `meshctl join` is not burnt.
func (cl *Client) ConsumeTokenFor(ctx context.Context, id, secret, purpose string, now time.Time) (Token, error) {
	unknown := &TokenError{err: ErrTokenUnknown}
	if ValidateName("token", id) != nil {
		return Token{}, unknown
	}
	key := TokenKey(id)
	for {
		t, rev, err := Get(ctx, cl, key, DecodeToken)
		if errors.Is(err, ErrNotFound) {
			return Token{}, unknown
		}
		if err != nil {
			return Token{}, err
		}
		// A wrong secret looks exactly like an unknown token, so the
		// answer does not confirm which ids exist.
		if subtle.ConstantTimeCompare([]byte(hashSecret(secret)), []byte(t.SecretSHA256)) != 1 {
			return Token{}, unknown
		}
		switch {
		case t.Purpose != purpose:
			if t.Purpose == PurposeCluster {
				return t, tokenErrorf(ErrTokenWrongPurpose, "token %s connects a cluster (`meshctl cluster connect`), it does not join a node", id)
			}
			return t, tokenErrorf(ErrTokenWrongPurpose, "token %s joins a node (`meshctl join`), it does not connect a cluster: make one with `meshctl cluster token`", id)
		case t.Revoked:
			return t, tokenErrorf(ErrTokenRevoked, "token %s was revoked; ask for a new one", id)
		case !now.Before(t.Expires):
			return t, tokenErrorf(ErrTokenExpired, "token %s expired at %s; ask for a new one", id, t.Expires.Format(time.RFC3339))
		case t.Uses >= t.MaxUses:
			return t, tokenErrorf(ErrTokenUsedUp, "token %s was used %d of %d times; ask for a new one", id, t.Uses, t.MaxUses)
		}
		t.Uses++
		data, err := Encode(&t)
		if err != nil {
			return Token{}, err
		}
		rctx, cancel := cl.reqCtx(ctx)
		resp, err := cl.kv.Txn(rctx).If(clientv3.Compare(clientv3.ModRevision(key), "=", rev)).
			Then(clientv3.OpPut(key, string(data))).Commit()
		cancel()
		if err != nil {
			return Token{}, fmt.Errorf("counting a use of %s: %w", key, err)
		}
		if resp.Succeeded {
			return t, nil
		}
		// Someone else used or changed it meanwhile: check again.
	}
}

// RevokeToken marks a token revoked; it stays listed for audit.
func (cl *Client) RevokeToken(ctx context.Context, id string) error {
	if err := ValidateName("token", id); err != nil {
		return err
	}
	key := TokenKey(id)
	for {
		t, rev, err := Get(ctx, cl, key, DecodeToken)
		if errors.Is(err, ErrNotFound) {
			return fmt.Errorf("%w: %s", ErrTokenUnknown, id)
		}
		if err != nil {
			return err
		}
		if t.Revoked {
			return nil
		}
		t.Revoked = true
		data, err := Encode(&t)
		if err != nil {
			return err
		}
		rctx, cancel := cl.reqCtx(ctx)
		resp, err := cl.kv.Txn(rctx).If(clientv3.Compare(clientv3.ModRevision(key), "=", rev)).
			Then(clientv3.OpPut(key, string(data))).Commit()
		cancel()
		if err != nil {
			return fmt.Errorf("revoking %s: %w", key, err)
		}
		if resp.Succeeded {
			return nil
		}
	}
}

// ListTokens returns every token by id.
func (cl *Client) ListTokens(ctx context.Context) ([]Token, error) {
	m, err := List(ctx, cl, TokensPrefix, DecodeToken)
	if err != nil {
		return nil, err
	}
	out := make([]Token, 0, len(m))
	for _, t := range m {
		out = append(out, t)
	}
	return out, nil
}

func hashSecret(secret string) string {
	sum := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(sum[:])
}

func randomString(n int) ([]byte, error) {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		return nil, fmt.Errorf("reading random bytes: %w", err)
	}
	return b, nil
}

func hexLower(b []byte) string { return hex.EncodeToString(b) }
