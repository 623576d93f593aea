package join

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/weftmesh/weft/pki"
)

// fakeStore mimics the kvstore token store: hashed secrets aside, the same
// rules and the same distinct errors, given in each of the forms a
// TokenStore may use.
type fakeStore struct {
	mu     sync.Mutex
	tokens map[string]*fakeToken
	calls  int
	// fail, when set, is every call's answer.
	fail error
}

// storeError is a store's own refusal, as kvstore.TokenError is: its own
// sentinel, and the detail for the user apart.
type storeError struct{ prefix, detail string }

var errStoreUsedUp = errors.New("store: join token used up")

func (e *storeError) Error() string  { return e.prefix + ": " + e.detail }
func (e *storeError) Unwrap() error  { return errStoreUsedUp }
func (e *storeError) Detail() string { return e.detail }

type fakeToken struct {
	secret  string
	expires time.Time
	uses    int
	maxUses int
	revoked bool
	grant   Grant
}

func (s *fakeStore) ConsumeToken(_ context.Context, id, secret string, now time.Time) (Grant, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls++
	if s.fail != nil {
		return Grant{}, s.fail
	}
	t, ok := s.tokens[id]
	switch {
	case !ok || t.secret != secret:
		// A store may answer the bare sentinel here, not to confirm which
		// ids exist; the service must still say something useful.
		return Grant{}, ErrTokenUnknown
	case t.revoked:
		return Grant{}, Errorf(CodeTokenRevoked, "token %s was revoked; ask for a new one", id)
	case !now.Before(t.expires):
		// The "%w: message" form a store may use.
		return Grant{}, fmt.Errorf("%w: token %s expired at %s; ask for a new one", ErrTokenExpired, id, t.expires.Format(time.RFC3339))
	case t.uses >= t.maxUses:
		err := &storeError{"store: join token used up", fmt.Sprintf("token %s was used %d of %d times; ask for a new one", id, t.uses, t.maxUses)}
		return Grant{}, TokenStoreError(err, map[error]Code{errStoreUsedUp: CodeTokenUsedUp})
	}
	t.uses++
	return t.grant, nil
}

const secret = "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3I"

type env struct {
	ca    *pki.CA
	store *fakeStore
	addr  string
}

func (e *env) token(id string) Token {
	return Token{Server: e.addr, ID: id, Secret: secret, CAHash: e.ca.Fingerprint()}
}

// start runs a join service on loopback with real TLS.
func start(t *testing.T, ca *pki.CA, store *fakeStore) *env {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := NewServer(ServerConfig{
		CA: ca, Tokens: store, Cluster: "east", Hosts: []string{"127.0.0.1"},
		EtcdEndpoints: []string{"https://198.18.0.1:2379"},
		Log:           slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(l) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return &env{ca: ca, store: store, addr: l.Addr().String()}
}

func newEnv(t *testing.T) *env {
	t.Helper()
	ca, err := pki.NewCA("test")
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	store := &fakeStore{tokens: map[string]*fakeToken{
		"single":  {secret: secret, expires: now.Add(time.Hour), maxUses: 1, grant: Grant{TokenID: "single", Labels: map[string]string{"app": "db", "vm:zone": "a"}}},
		"reuse":   {secret: secret, expires: now.Add(time.Hour), maxUses: 3, grant: Grant{TokenID: "reuse", Cluster: "west"}},
		"expired": {secret: secret, expires: now.Add(-time.Minute), maxUses: 1},
		"revoked": {secret: secret, expires: now.Add(time.Hour), maxUses: 1, revoked: true},
	}}
	return start(t, ca, store)
}

func TestJoin(t *testing.T) {
	e := newEnv(t)
	creds, err := Join(context.Background(), e.token("single"), Request{NodeName: "vm-1", Labels: map[string]string{"app": "web", "tier": "back"}})
	if err != nil {
		t.Fatal(err)
	}
	if creds.Cluster != "east" || creds.NodeName != "vm-1" {
		t.Errorf("cluster %q node %q", creds.Cluster, creds.NodeName)
	}
	want := map[string]string{"vm:app": "db", "vm:zone": "a", "vm:tier": "back"}
	if fmt.Sprint(creds.Labels) != fmt.Sprint(want) {
		t.Errorf("labels %v, want %v (the token's win)", creds.Labels, want)
	}
	if len(creds.Overridden) != 1 || creds.Overridden[0] != "vm:app=web" {
		t.Errorf("overridden %v", creds.Overridden)
	}
	if len(creds.EtcdEndpoints) != 1 || !bytes.Equal(creds.CAPEM, e.ca.CertPEM) {
		t.Errorf("endpoints %v", creds.EtcdEndpoints)
	}
	// The credentials work as TLS client credentials chained to the CA.
	pair, err := tls.X509KeyPair(creds.CertPEM, creds.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(pair.Certificate[0])
	if cert.Subject.CommonName != "node:east/vm-1" || cert.Subject.Organization[0] != NodeOrganization {
		t.Errorf("subject %v", cert.Subject)
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: e.ca.Pool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Error(err)
	}

	dir := filepath.Join(t.TempDir(), "creds")
	files, err := creds.WriteFiles(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{files.CA, files.Cert, files.Key} {
		if fi, err := os.Stat(f); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v %v", f, fi.Mode(), err)
		}
	}

	// A reusable token names its own cluster and serves several nodes.
	for _, n := range []string{"vm-2", "vm-3"} {
		c, err := Join(context.Background(), e.token("reuse"), Request{NodeName: n})
		if err != nil || c.Cluster != "west" {
			t.Fatalf("%s: %v %+v", n, err, c)
		}
	}
}

func TestRefusedTokens(t *testing.T) {
	e := newEnv(t)
	if _, err := Join(context.Background(), e.token("single"), Request{NodeName: "vm-1"}); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		tok  Token
		err  error
		want string
	}{
		{"re-used single-use", e.token("single"), ErrTokenUsedUp, "token single was used 1 of 1 times"},
		{"expired", e.token("expired"), ErrTokenExpired, "token expired expired at"},
		{"revoked", e.token("revoked"), ErrTokenRevoked, "token revoked was revoked"},
		{"unknown", e.token("nosuch"), ErrTokenUnknown, "this mesh does not know the token"},
		{"wrong secret", Token{Server: e.addr, ID: "reuse", Secret: strings.Repeat("x", 43), CAHash: e.ca.Fingerprint()}, ErrTokenUnknown, "this mesh does not know the token"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Join(context.Background(), tc.tok, Request{NodeName: "vm-9"})
			if !errors.Is(err, tc.err) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("want %v containing %q, got %v", tc.err, tc.want, err)
			}
			if strings.Count(err.Error(), strings.TrimPrefix(tc.err.Error(), "join: ")) != 1 {
				t.Errorf("the reason is repeated: %v", err)
			}
		})
	}
}

func TestWrongCAIsRefused(t *testing.T) {
	e := newEnv(t)
	other, _ := pki.NewCA("other mesh")

	t.Run("token pins another CA", func(t *testing.T) {
		tok := e.token("single")
		tok.CAHash = other.Fingerprint()
		_, err := Join(context.Background(), tok, Request{NodeName: "vm-1"})
		if !errors.Is(err, ErrWrongCA) || !strings.Contains(err.Error(), "the token pins CA "+other.Fingerprint()) || !strings.Contains(err.Error(), e.ca.Fingerprint()) {
			t.Errorf("got %v", err)
		}
		if e.store.calls != 0 {
			t.Errorf("the token was presented to an unverified service (%d store calls)", e.store.calls)
		}
	})

	t.Run("impostor presents the real CA with its own leaf", func(t *testing.T) {
		// The impostor knows the mesh's CA certificate (it is public) but
		// not its key: its leaf is signed by another CA.
		certPEM, keyPEM, _ := other.IssueServer("impostor", []string{"127.0.0.1"})
		pair, err := tls.X509KeyPair(append(certPEM, e.ca.CertPEM...), keyPEM)
		if err != nil {
			t.Fatal(err)
		}
		l, _ := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{pair}})
		got := make(chan []byte, 1)
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			b, _ := io.ReadAll(r.Body)
			got <- b
		})}
		go srv.Serve(l)
		t.Cleanup(func() { srv.Close() })
		tok := e.token("single")
		tok.Server = l.Addr().String()
		_, err = Join(context.Background(), tok, Request{NodeName: "vm-1"})
		if !errors.Is(err, ErrWrongCA) || !strings.Contains(err.Error(), "does not verify against the pinned CA") {
			t.Errorf("got %v", err)
		}
		select {
		case b := <-got:
			t.Errorf("the impostor received the request: %s", b)
		default:
		}
	})
}

func TestServerRefusesBadRequestsWithoutBurningTheToken(t *testing.T) {
	e := newEnv(t)
	pool := e.ca.Pool()
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	_, csr, _ := pki.NewKeyAndCSR("x")
	csrJSON := strings.ReplaceAll(strings.TrimSpace(string(csr)), "\n", `\n`)
	for _, tc := range []struct{ body, want string }{
		{`{"tokenID":"single","secret":"` + secret + `","nodeName":"VM 1","csr":"` + csrJSON + `"}`, "not a valid node name"},
		{`{"tokenID":"single","secret":"` + secret + `","nodeName":"vm-1","labels":{"mesh:kind":"x"},"csr":"` + csrJSON + `"}`, "reserved"},
		{`{"tokenID":"single","secret":"` + secret + `","nodeName":"vm-1","csr":"nope"}`, "certificate request"},
		{`{"tokenID":"single","secret":"` + secret + `","nodeName":"vm-1","csr":"` + csrJSON + `","admin":true}`, "unknown field"},
	} {
		resp, err := hc.Post("https://"+e.addr+joinPath, "application/json", strings.NewReader(tc.body))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(b), tc.want) {
			t.Errorf("got %d %s, want 400 with %q", resp.StatusCode, b, tc.want)
		}
	}
	if e.store.calls != 0 {
		t.Errorf("a bad request consumed the token (%d store calls)", e.store.calls)
	}
	if _, err := Join(context.Background(), e.token("single"), Request{NodeName: "vm-1"}); err != nil {
		t.Errorf("the single-use token should still work: %v", err)
	}
}

func TestClientValidatesBeforeSending(t *testing.T) {
	e := newEnv(t)
	if _, err := Join(context.Background(), e.token("single"), Request{NodeName: "Bad_Name"}); !errors.Is(err, ErrInvalidRequest) || !strings.Contains(err.Error(), "--name") {
		t.Errorf("got %v", err)
	}
	tok := e.token("single")
	tok.Server = "127.0.0.1:1"
	_, err := Join(context.Background(), tok, Request{NodeName: "vm-1"})
	if !errors.Is(err, ErrService) || !strings.Contains(err.Error(), "cannot reach the join service at 127.0.0.1:1") {
		t.Errorf("unreachable service: %v", err)
	}
	if e.store.calls != 0 {
		t.Errorf("store called %d times", e.store.calls)
	}
}

// Every code the service sends comes back to the client as an *Error of
// that code, matching its sentinel and no other, with the store's message
// once; a service failure is told without its details.
func TestErrorCodesRoundTrip(t *testing.T) {
	e := newEnv(t)
	for _, tc := range []struct {
		err  error
		code Code
		want string // the client's whole error text
	}{
		{Errorf(CodeTokenUnknown, "token t9 is not known"), CodeTokenUnknown, "join: unknown join token: token t9 is not known"},
		{Errorf(CodeTokenExpired, "token t9 expired"), CodeTokenExpired, "join: join token expired: token t9 expired"},
		{Errorf(CodeTokenRevoked, "token t9 was revoked"), CodeTokenRevoked, "join: join token revoked: token t9 was revoked"},
		{Errorf(CodeTokenUsedUp, "token t9 was used 3 of 3 times"), CodeTokenUsedUp, "join: join token used up: token t9 was used 3 of 3 times"},
		{Errorf(CodeInvalid, "no such cluster"), CodeInvalid, "join: invalid join request: no such cluster"},
		// A bare refusal gets the code's hint.
		{Errorf(CodeTokenExpired, ""), CodeTokenExpired, "join: join token expired: make a new one with 'meshctl token create'"},
		{fmt.Errorf("%w: token t9 expired", ErrTokenExpired), CodeTokenExpired, "join: join token expired: token t9 expired"},
		{TokenStoreError(&storeError{"store: join token used up", ""}, map[error]Code{errStoreUsedUp: CodeTokenUsedUp}), CodeTokenUsedUp,
			"join: join token used up: make a new one with 'meshctl token create' (--reusable --max-uses N for several machines)"},
		{errors.New("etcd: no leader"), CodeService, "join: join service error: the join service failed; its log on the mesh's first node says why"},
		{TokenStoreError(errors.New("etcd: no leader"), map[error]Code{errStoreUsedUp: CodeTokenUsedUp}), CodeService, "join: join service error: the join service failed; its log on the mesh's first node says why"},
	} {
		e.store.fail = tc.err
		_, err := Join(context.Background(), e.token("reuse"), Request{NodeName: "vm-9"})
		var je *Error
		if !errors.As(err, &je) || je.Code != tc.code || err.Error() != tc.want {
			t.Errorf("store error %v: got %#v (%v), want code %s and %q", tc.err, err, err, tc.code, tc.want)
			continue
		}
		for _, c := range codes {
			if got := errors.Is(err, c.sentinel); got != (c.code == tc.code) {
				t.Errorf("%v: errors.Is(%v) = %v", err, c.sentinel, got)
			}
		}
	}
}

// A token store's failures that are not refusals pass TokenStoreError
// unchanged: they are the service's to report.
func TestTokenStoreErrorKeepsFailures(t *testing.T) {
	boom := errors.New("etcd: no leader")
	if got := TokenStoreError(boom, map[error]Code{errStoreUsedUp: CodeTokenUsedUp}); got != boom {
		t.Errorf("got %v", got)
	}
	err := TokenStoreError(&storeError{"store: join token used up", "token t1 was used 1 of 1 times"}, map[error]Code{errStoreUsedUp: CodeTokenUsedUp})
	if !errors.Is(err, ErrTokenUsedUp) || !errors.Is(err, errStoreUsedUp) || err.Error() != "join: join token used up: token t1 was used 1 of 1 times" {
		t.Errorf("got %v", err)
	}
}
