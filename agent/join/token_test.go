package join

import (
	"encoding/base64"
	"errors"
	"strings"
	"testing"
)

var sample = Token{
	Server: "198.18.0.1:51834",
	ID:     "t0123456789abcdef",
	Secret: "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3I",
	CAHash: "sha256:" + strings.Repeat("ab", 32),
}

func TestTokenRoundTrip(t *testing.T) {
	for _, srv := range []string{"198.18.0.1:51834", "[2001:db8::1]:443", "seed.example.net:51834"} {
		tok := sample
		tok.Server = srv
		s := tok.String()
		if strings.ContainsAny(s, " '\"$`\\!*?[]{}#&;|<>()~") {
			t.Errorf("token has shell-special characters: %s", s)
		}
		got, err := ParseToken("  " + s + "\n")
		if err != nil {
			t.Fatalf("%s: %v", srv, err)
		}
		if got != tok {
			t.Errorf("round trip: %+v != %+v", got, tok)
		}
	}
}

func encode(raw string) string {
	return TokenPrefix + base64.RawURLEncoding.EncodeToString([]byte(raw))
}

func TestParseTokenRefuses(t *testing.T) {
	cases := map[string]struct{ in, want string }{
		"empty":         {"", "must start with"},
		"other string":  {"hello", "must start with"},
		"version":       {"weft2.abc", "unsupported token version"},
		"cut short":     {sample.String()[:40] + "=", "not valid base64"},
		"truncated":     {sample.String()[:len(sample.String())-3], "content does not decode"},
		"not json":      {encode("hi"), "content does not decode"},
		"unknown field": {encode(`{"s":"a:1","i":"x","k":"y","c":"z","x":1}`), "unknown field"},
		"bad server":    {encode(`{"s":"198.18.0.1","i":"t1","k":"` + sample.Secret + `","c":"` + sample.CAHash + `"}`), "join service address"},
		"wildcard":      {encode(`{"s":"0.0.0.0:51834","i":"t1","k":"` + sample.Secret + `","c":"` + sample.CAHash + `"}`), "wildcard"},
		"port":          {encode(`{"s":"a:0","i":"t1","k":"` + sample.Secret + `","c":"` + sample.CAHash + `"}`), "port must be"},
		"bad id":        {encode(`{"s":"a:1","i":"T/1","k":"` + sample.Secret + `","c":"` + sample.CAHash + `"}`), "token id"},
		"short secret":  {encode(`{"s":"a:1","i":"t1","k":"abc","c":"` + sample.CAHash + `"}`), "secret"},
		"bad hash":      {encode(`{"s":"a:1","i":"t1","k":"` + sample.Secret + `","c":"md5:00"}`), "CA fingerprint"},
		"upper hash":    {encode(`{"s":"a:1","i":"t1","k":"` + sample.Secret + `","c":"sha256:` + strings.Repeat("AB", 32) + `"}`), "CA fingerprint"},
		"non canonical": {encode(`{"s": "a:1","i":"t1","k":"` + sample.Secret + `","c":"` + sample.CAHash + `"}`), "canonical"},
		"too long":      {TokenPrefix + strings.Repeat("A", 2000), "too long"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := ParseToken(tc.in)
			if !errors.Is(err, ErrMalformedToken) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("want ErrMalformedToken containing %q, got %v", tc.want, err)
			}
		})
	}
}

func FuzzParseToken(f *testing.F) {
	f.Add(sample.String())
	f.Add("weft1.")
	f.Add(encode(`{"s":"[::1]:1","i":"a","k":"` + sample.Secret + `","c":"` + sample.CAHash + `"}`))
	f.Add(encode(`{"s":"a:1","i":"t1","k":"x","c":"y","s":"b:2"}`))
	f.Fuzz(func(t *testing.T, s string) {
		tok, err := ParseToken(s)
		if err != nil {
			if !errors.Is(err, ErrMalformedToken) {
				t.Fatalf("error without ErrMalformedToken: %v", err)
			}
			return
		}
		if err := tok.Validate(); err != nil {
			t.Fatalf("accepted an invalid token: %v", err)
		}
		again, err := ParseToken(tok.String())
		if err != nil || again != tok {
			t.Fatalf("re-encoding does not parse back: %v %+v %+v", err, again, tok)
		}
		if strings.TrimSpace(s) != tok.String() {
			t.Fatalf("two spellings accepted: %q and %q", s, tok.String())
		}
	})
}
