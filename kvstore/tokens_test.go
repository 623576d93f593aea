package kvstore_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/weftmesh/weft/kvstore"
	"github.com/weftmesh/weft/kvstore/kvstoretest"
)

// ConsumeToken's refusals keep the words for the user (Detail) apart from
// their sentinel, so the join service passes them on without cutting
// text; an unknown token says nothing about which ids exist.
func TestTokenRefusalsCarryTheirDetail(t *testing.T) {
	c, _ := kvstoretest.New(t)
	ctx := context.Background()
	now := time.Now()
	tok, secret, err := c.CreateToken(ctx, kvstore.TokenSpec{Cluster: "east", TTL: time.Hour, MaxUses: 1}, now)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.ConsumeToken(ctx, tok.ID, secret, now); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		what     string
		err      error
		sentinel error
		detail   string
	}{
		{"wrong secret", consume(c, tok.ID, "wrong", now), kvstore.ErrTokenUnknown, ""},
		{"unknown id", consume(c, "tnope", secret, now), kvstore.ErrTokenUnknown, ""},
		{"used up", consume(c, tok.ID, secret, now), kvstore.ErrTokenUsedUp, "token " + tok.ID + " was used 1 of 1 times; ask for a new one"},
		{"expired", consume(c, tok.ID, secret, now.Add(2*time.Hour)), kvstore.ErrTokenExpired, "token " + tok.ID + " expired at " + tok.Expires.Format(time.RFC3339) + "; ask for a new one"},
	} {
		var te *kvstore.TokenError
		if !errors.As(tc.err, &te) || !errors.Is(tc.err, tc.sentinel) || te.Detail() != tc.detail {
			t.Errorf("%s: %v, want a *TokenError wrapping %v with detail %q", tc.what, tc.err, tc.sentinel, tc.detail)
			continue
		}
		want := tc.sentinel.Error()
		if tc.detail != "" {
			want += ": " + tc.detail
		}
		if tc.err.Error() != want {
			t.Errorf("%s: text %q, want %q", tc.what, tc.err, want)
		}
	}
	if err := c.RevokeToken(ctx, tok.ID); err != nil {
		t.Fatal(err)
	}
	var te *kvstore.TokenError
	if err := consume(c, tok.ID, secret, now); !errors.As(err, &te) || !errors.Is(err, kvstore.ErrTokenRevoked) || te.Detail() != "token "+tok.ID+" was revoked; ask for a new one" {
		t.Errorf("revoked: %v", err)
	}
}

func consume(c *kvstore.Client, id, secret string, now time.Time) error {
	_, err := c.ConsumeToken(context.Background(), id, secret, now)
	return err
}
