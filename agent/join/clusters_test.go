package join

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/weftmesh/weft/kvstore"
	"github.com/weftmesh/weft/pki"
)

// clusterStore is a token store with node tokens and, apart, cluster
// tokens: the same rules for both, as kvstore keeps them by purpose.
type clusterStore struct {
	nodes    *fakeStore
	clusters *fakeStore
}

func (s *clusterStore) ConsumeToken(ctx context.Context, id, secret string, now time.Time) (Grant, error) {
	return s.nodes.ConsumeToken(ctx, id, secret, now)
}

func (s *clusterStore) ConsumeClusterToken(ctx context.Context, id, secret string, now time.Time) (Grant, error) {
	return s.clusters.ConsumeToken(ctx, id, secret, now)
}

// fakeConnector is the seed's side of a connection: it records the offers
// it was given and the clusters dropped, and answers with its own offer.
type fakeConnector struct {
	mu      sync.Mutex
	answer  ClusterOffer
	fail    error
	offers  []ClusterOffer
	granted []string // the token's cluster of each AcceptCluster
	dropped []string
}

func (f *fakeConnector) AcceptCluster(_ context.Context, tokenCluster string, o ClusterOffer) (ClusterOffer, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.offers = append(f.offers, o)
	f.granted = append(f.granted, tokenCluster)
	if f.fail != nil {
		return ClusterOffer{}, f.fail
	}
	return f.answer, nil
}

func (f *fakeConnector) DropCluster(_ context.Context, name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.dropped = append(f.dropped, name)
	return f.fail
}

func (f *fakeConnector) accepted() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.offers)
}

// offer is cluster name's side of a connection: its CA and a credential
// from that CA for reader.
func offer(t testing.TB, ca *pki.CA, name string, id int, pool, reader string) ClusterOffer {
	t.Helper()
	cert, key, err := ca.IssueClient(ClusterCommonName(reader), []string{ClusterOrganization})
	if err != nil {
		t.Fatal(err)
	}
	return ClusterOffer{
		Name: name, ID: id, MeshPool: pool, PodCIDRs: []string{"10.244.0.0/16"},
		JoinServer: "198.18.0.1:51834", EtcdEndpoints: []string{"https://198.18.0.1:2379"},
		CACert: string(ca.CertPEM), Cert: string(cert), Key: string(key),
	}
}

// clusterEnv is cluster east's join service, which connects clusters, and
// what cluster west needs to connect to it.
type clusterEnv struct {
	east, west *pki.CA
	store      *clusterStore
	conn       *fakeConnector
	addr       string
	// mine is west's offer, made for east.
	mine ClusterOffer
}

func (e *clusterEnv) token(id string) Token {
	return Token{Server: e.addr, ID: id, Secret: secret, CAHash: e.east.Fingerprint(), Cluster: "east"}
}

// serveClusters runs a join service for east on loopback with real TLS;
// conn nil is a service that does not connect clusters.
func serveClusters(t *testing.T, ca *pki.CA, tokens TokenStore, conn ClusterConnector) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg := ServerConfig{
		CA: ca, Tokens: tokens, Cluster: "east", Hosts: []string{"127.0.0.1"},
		EtcdEndpoints: []string{"https://198.18.0.1:2379"},
		Log:           slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
	if conn != nil {
		cfg.Clusters = conn
	}
	srv, err := NewServer(cfg)
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
	return l.Addr().String()
}

func newClusterEnv(t *testing.T) *clusterEnv {
	t.Helper()
	east, err := pki.NewCA("east")
	if err != nil {
		t.Fatal(err)
	}
	west, err := pki.NewCA("west")
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	store := &clusterStore{
		nodes: &fakeStore{tokens: map[string]*fakeToken{
			"node": {secret: secret, expires: now.Add(time.Hour), maxUses: 1, grant: Grant{TokenID: "node"}},
		}},
		clusters: &fakeStore{tokens: map[string]*fakeToken{
			"ct1":     {secret: secret, expires: now.Add(time.Hour), maxUses: 1, grant: Grant{TokenID: "ct1", Cluster: "east"}},
			"expired": {secret: secret, expires: now.Add(-time.Minute), maxUses: 1, grant: Grant{TokenID: "expired", Cluster: "east"}},
		}},
	}
	conn := &fakeConnector{answer: offer(t, east, "east", 1, "100.64.0.0/16", "west")}
	e := &clusterEnv{east: east, west: west, store: store, conn: conn, mine: offer(t, west, "west", 2, "100.65.0.0/16", "east")}
	e.addr = serveClusters(t, east, store, conn)
	return e
}

func TestConnectCluster(t *testing.T) {
	e := newClusterEnv(t)
	ctx := context.Background()
	theirs, err := ConnectCluster(ctx, e.token("ct1"), e.mine)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(theirs) != fmt.Sprint(e.conn.answer) {
		t.Errorf("answer changed on the way:\n got %+v\nwant %+v", theirs, e.conn.answer)
	}
	if len(e.conn.offers) != 1 || fmt.Sprint(e.conn.offers[0]) != fmt.Sprint(e.mine) || e.conn.granted[0] != "east" {
		t.Errorf("the connector got %+v for token cluster %v, want west's offer once for east", e.conn.offers, e.conn.granted)
	}
	if e.store.clusters.calls != 1 || e.store.nodes.calls != 0 {
		t.Errorf("consumed %d cluster and %d node tokens, want one cluster token", e.store.clusters.calls, e.store.nodes.calls)
	}
	// The token works once, and the refusal says how to get another.
	_, err = ConnectCluster(ctx, e.token("ct1"), e.mine)
	if !errors.Is(err, ErrTokenUsedUp) || !strings.Contains(err.Error(), "token ct1 was used 1 of 1 times") {
		t.Errorf("a second use: %v", err)
	}
	if e.conn.accepted() != 1 {
		t.Errorf("a used-up token reached the connector")
	}
}

// Store refusals reach the connecting cluster with the store's message, or
// a cluster token's hint when the store says nothing (an unknown token).
func TestConnectClusterRefusedTokens(t *testing.T) {
	e := newClusterEnv(t)
	for _, tc := range []struct {
		id   string
		err  error
		want string
	}{
		{"expired", ErrTokenExpired, "token expired expired at"},
		{"nosuch", ErrTokenUnknown, "join: unknown join token: the other cluster does not know the token: check it was copied whole, or make a new one with `meshctl cluster token`"},
	} {
		_, err := ConnectCluster(context.Background(), e.token(tc.id), e.mine)
		if !errors.Is(err, tc.err) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("token %s: want %v containing %q, got %v", tc.id, tc.err, tc.want, err)
		}
	}
	// A node token presented as a cluster token is not known as one, and
	// the node token is not spent.
	tok := e.token("node")
	if _, err := ConnectCluster(context.Background(), tok, e.mine); !errors.Is(err, ErrTokenUnknown) {
		t.Errorf("a node token's id in a cluster token: %v", err)
	}
	if e.store.nodes.calls != 0 || e.conn.accepted() != 0 {
		t.Errorf("node tokens consumed %d, offers accepted %d", e.store.nodes.calls, e.conn.accepted())
	}
}

func TestConnectClusterWrongCA(t *testing.T) {
	e := newClusterEnv(t)
	tok := e.token("ct1")
	tok.CAHash = e.west.Fingerprint()
	_, err := ConnectCluster(context.Background(), tok, e.mine)
	var je *Error
	if !errors.As(err, &je) || je.Code != CodeWrongCA || !errors.Is(err, ErrWrongCA) || !strings.Contains(err.Error(), "the token pins CA "+e.west.Fingerprint()) ||
		!strings.Contains(err.Error(), "make a new cluster token with `meshctl cluster token` on the other cluster's first node") || strings.Contains(err.Error(), "cannot reach") {
		t.Errorf("got %v", err)
	}
	if e.store.clusters.calls != 0 || e.conn.accepted() != 0 {
		t.Errorf("the token was presented to an unverified service (%d store calls, %d offers)", e.store.clusters.calls, e.conn.accepted())
	}
}

func TestConnectClusterRefusesANodeToken(t *testing.T) {
	e := newClusterEnv(t)
	tok := e.token("ct1")
	tok.Cluster = ""
	_, err := ConnectCluster(context.Background(), tok, e.mine)
	if !errors.Is(err, ErrInvalidRequest) || !strings.Contains(err.Error(), "this is a join token for nodes") || !strings.Contains(err.Error(), "meshctl cluster token") {
		t.Errorf("got %v", err)
	}
	if e.store.clusters.calls+e.store.nodes.calls != 0 {
		t.Errorf("a node token was sent to connect a cluster")
	}
}

func TestJoinRefusesAClusterToken(t *testing.T) {
	e := newClusterEnv(t)
	_, err := Join(context.Background(), e.token("ct1"), Request{NodeName: "vm-1"})
	if !errors.Is(err, ErrInvalidRequest) || !strings.Contains(err.Error(), "this is a cluster token (it connects cluster east") || !strings.Contains(err.Error(), "meshctl token create") {
		t.Errorf("got %v", err)
	}
	if e.store.clusters.calls+e.store.nodes.calls != 0 {
		t.Errorf("a cluster token was sent to join a node")
	}
}

// badOffers are west's offer with one field wrong each, and what the
// refusal must say about it.
func badOffers(t testing.TB, good ClusterOffer, other *pki.CA) map[string]struct {
	offer ClusterOffer
	want  string
} {
	with := func(f func(*ClusterOffer)) ClusterOffer {
		o := good
		o.PodCIDRs = append([]string(nil), good.PodCIDRs...)
		o.EtcdEndpoints = append([]string(nil), good.EtcdEndpoints...)
		f(&o)
		return o
	}
	many := func(n int, f func(i int) string) []string {
		var out []string
		for i := range n {
			out = append(out, f(i))
		}
		return out
	}
	strangerCert, strangerKey, err := other.IssueClient(ClusterCommonName("east"), []string{ClusterOrganization})
	if err != nil {
		t.Fatal(err)
	}
	otherCert, _, _ := other.IssueClient(ClusterCommonName("east"), []string{ClusterOrganization})
	return map[string]struct {
		offer ClusterOffer
		want  string
	}{
		"name":                  {with(func(o *ClusterOffer) { o.Name = "West_1" }), `offer: "West_1" is not a valid cluster name`},
		"no name":               {with(func(o *ClusterOffer) { o.Name = "" }), `offer: "" is not a valid cluster name`},
		"id 0":                  {with(func(o *ClusterOffer) { o.ID = 0 }), "offer: cluster west: id 0 out of range 1..4095"},
		"id 4096":               {with(func(o *ClusterOffer) { o.ID = 4096 }), "offer: cluster west: id 4096 out of range 1..4095"},
		"pool not canonical":    {with(func(o *ClusterOffer) { o.MeshPool = "100.65.0.1/16" }), `offer: cluster west: meshPool: "100.65.0.1/16" is not a CIDR in canonical form`},
		"pool not a CIDR":       {with(func(o *ClusterOffer) { o.MeshPool = "100.65.0.0" }), `meshPool: "100.65.0.0" is not a CIDR`},
		"pool outside the mesh": {with(func(o *ClusterOffer) { o.MeshPool = "10.0.0.0/16" }), "meshPool 10.0.0.0/16 is outside the mesh range 100.64.0.0/10"},
		"pool wider than mesh":  {with(func(o *ClusterOffer) { o.MeshPool = "100.0.0.0/8" }), "meshPool 100.0.0.0/8 is outside the mesh range"},
		"pool IPv4-mapped":      {with(func(o *ClusterOffer) { o.MeshPool = "::ffff:100.65.0.0/112" }), "meshPool"},
		"too many pod CIDRs": {with(func(o *ClusterOffer) {
			o.PodCIDRs = many(65, func(i int) string { return fmt.Sprintf("10.%d.0.0/16", i) })
		}), "offer: cluster west: 65 pod CIDRs, at most 64"},
		"pod CIDR not canonical": {with(func(o *ClusterOffer) { o.PodCIDRs = []string{"10.244.0.1/16"} }), `podCIDRs: "10.244.0.1/16" is not a CIDR in canonical form`},
		"pod CIDRs overlap":      {with(func(o *ClusterOffer) { o.PodCIDRs = []string{"10.244.0.0/16", "10.244.7.0/24"} }), "podCIDRs: 10.244.7.0/24 overlaps 10.244.0.0/16"},
		"pod CIDR in the pool":   {with(func(o *ClusterOffer) { o.PodCIDRs = []string{"100.65.1.0/24"} }), "podCIDRs: 100.65.1.0/24 overlaps 100.65.0.0/16"},
		"no etcd endpoints":      {with(func(o *ClusterOffer) { o.EtcdEndpoints = nil }), "offer: cluster west: 0 etcd endpoints, want 1..16"},
		"too many etcd endpoints": {with(func(o *ClusterOffer) {
			o.EtcdEndpoints = many(17, func(i int) string { return fmt.Sprintf("https://198.18.0.%d:2379", i+1) })
		}), "17 etcd endpoints, want 1..16"},
		"etcd endpoint not https": {with(func(o *ClusterOffer) { o.EtcdEndpoints = []string{"http://198.18.0.1:2379"} }), `etcdEndpoints: "http://198.18.0.1:2379" is not https://host:port`},
		"etcd endpoint no port":   {with(func(o *ClusterOffer) { o.EtcdEndpoints = []string{"https://198.18.0.1"} }), `etcdEndpoints: "https://198.18.0.1" is not https://host:port`},
		"etcd endpoint path":      {with(func(o *ClusterOffer) { o.EtcdEndpoints = []string{"https://198.18.0.1:2379/v3"} }), "etcdEndpoints"},
		"CA not PEM":              {with(func(o *ClusterOffer) { o.CACert = "not a certificate" }), "offer: cluster west: CA:"},
		"key not matching":        {with(func(o *ClusterOffer) { o.Cert = string(otherCert) }), "offer: cluster west: credential:"},
		"no key":                  {with(func(o *ClusterOffer) { o.Key = "" }), "offer: cluster west: credential:"},
		"credential of another CA": {with(func(o *ClusterOffer) { o.Cert, o.Key = string(strangerCert), string(strangerKey) }),
			"offer: cluster west: credential: not a client certificate of the offer's CA"},
		"join server no port":  {with(func(o *ClusterOffer) { o.JoinServer = "198.18.0.1" }), `offer: cluster west: join service: "198.18.0.1" is not host:port`},
		"join server wildcard": {with(func(o *ClusterOffer) { o.JoinServer = "0.0.0.0:51834" }), "join service: \"0.0.0.0:51834\": a wildcard address cannot be dialled"},
	}
}

// An offer with a field wrong is refused, naming the field, by the
// connecting side before anything is sent and by the service before the
// token is consumed: a bug on one side does not burn the other's token.
func TestInvalidOffersAreRefused(t *testing.T) {
	e := newClusterEnv(t)
	if err := e.mine.Validate(); err != nil {
		t.Fatalf("the good offer: %v", err)
	}
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: e.east.Pool()}}}
	defer hc.CloseIdleConnections()
	for name, tc := range badOffers(t, e.mine, e.east) {
		t.Run(name, func(t *testing.T) {
			_, err := ConnectCluster(context.Background(), e.token("ct1"), tc.offer)
			if !errors.Is(err, ErrInvalidRequest) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("client: want an invalid request containing %q, got %v", tc.want, err)
			}
			// The same offer sent as a client that skips the check would.
			body, _ := json.Marshal(clusterConnectRequest{TokenID: "ct1", Secret: secret, Offer: tc.offer})
			resp, err := hc.Post("https://"+e.addr+clusterConnectPath, "application/json", strings.NewReader(string(body)))
			if err != nil {
				t.Fatal(err)
			}
			data, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			err = decodeError(resp, data)
			var je *Error
			if resp.StatusCode != http.StatusBadRequest || !errors.As(err, &je) || je.Code != CodeInvalid || !strings.Contains(je.Message, tc.want) {
				t.Errorf("service: got %d %s, want 400 invalid containing %q", resp.StatusCode, data, tc.want)
			}
		})
	}
	if e.store.clusters.calls != 0 || e.conn.accepted() != 0 {
		t.Fatalf("an invalid offer consumed the token (%d store calls, %d offers accepted)", e.store.clusters.calls, e.conn.accepted())
	}
	if _, err := ConnectCluster(context.Background(), e.token("ct1"), e.mine); err != nil {
		t.Errorf("the token should still work: %v", err)
	}
}

func TestConnectRequestDecodeErrors(t *testing.T) {
	e := newClusterEnv(t)
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: e.east.Pool()}}}
	defer hc.CloseIdleConnections()
	for _, tc := range []struct{ body, want string }{
		{`{"tokenID":"ct1","secret":"` + secret + `","offer":{},"admin":true}`, `unknown field \"admin\"`},
		{`{"tokenID":"ct1","secret":"` + secret + `","offer":{"name":"west","id":"2"}}`, "decoding the request"},
		{`nope`, "decoding the request"},
	} {
		resp, err := hc.Post("https://"+e.addr+clusterConnectPath, "application/json", strings.NewReader(tc.body))
		if err != nil {
			t.Fatal(err)
		}
		data, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(data), tc.want) {
			t.Errorf("%s: got %d %s, want 400 with %q", tc.body, resp.StatusCode, data, tc.want)
		}
	}
	if e.store.clusters.calls != 0 {
		t.Errorf("a bad request consumed the token")
	}
}

// A join service without a connector, or whose token store keeps no
// cluster tokens, connects no cluster and consumes nothing.
func TestServiceWithoutClustersForbids(t *testing.T) {
	e := newClusterEnv(t)
	for name, addr := range map[string]string{
		"no connector":           serveClusters(t, e.east, e.store, nil),
		"no cluster token store": serveClusters(t, e.east, e.store.nodes, e.conn),
	} {
		tok := e.token("ct1")
		tok.Server = addr
		_, err := ConnectCluster(context.Background(), tok, e.mine)
		if !errors.Is(err, ErrForbidden) || !strings.Contains(err.Error(), "this join service does not connect clusters") {
			t.Errorf("%s: connect: %v", name, err)
		}
		cert, key, _ := e.east.IssueClient(ClusterCommonName("west"), []string{ClusterOrganization})
		err = DisconnectCluster(context.Background(), addr, "west", e.east.CertPEM, cert, key)
		if name == "no connector" && (!errors.Is(err, ErrForbidden) || !strings.Contains(err.Error(), "does not connect clusters")) {
			t.Errorf("%s: disconnect: %v", name, err)
		}
	}
	if e.store.clusters.calls+e.store.nodes.calls != 0 || e.conn.accepted() != 0 {
		t.Errorf("store calls %d+%d, offers %d", e.store.clusters.calls, e.store.nodes.calls, e.conn.accepted())
	}
}

// The answer must be the cluster the token names, with the CA it pins,
// and usable.
func TestConnectClusterChecksTheAnswer(t *testing.T) {
	e := newClusterEnv(t)
	good := e.conn.answer
	for _, tc := range []struct {
		name   string
		answer ClusterOffer
		code   Code
		want   string
	}{
		{"another cluster", offer(t, e.east, "north", 1, "100.64.0.0/16", "west"), CodeService, `the token is for cluster "east", the service answered as cluster "north"`},
		{"another CA", offer(t, e.west, "east", 1, "100.64.0.0/16", "west"), CodeWrongCA, "the other cluster answered with CA " + e.west.Fingerprint() + ", not the pinned " + e.east.Fingerprint()},
		{"unusable", func() ClusterOffer { o := good; o.EtcdEndpoints = nil; return o }(), CodeService, "the other cluster's answer is unusable: join: invalid join request: offer: cluster east: 0 etcd endpoints"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e.conn.answer = tc.answer
			id := strings.ToLower(strings.ReplaceAll(tc.name, " ", "-"))
			e.store.clusters.tokens[id] = &fakeToken{secret: secret, expires: time.Now().Add(time.Hour), maxUses: 1, grant: Grant{TokenID: id, Cluster: "east"}}
			_, err := ConnectCluster(context.Background(), e.token(id), e.mine)
			var je *Error
			if !errors.As(err, &je) || je.Code != tc.code || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("want code %s containing %q, got %v", tc.code, tc.want, err)
			}
		})
	}
}

// A refusal from the connector (a name or range collision) reaches the
// connecting cluster as it was given; a failure is not told in detail.
func TestConnectorRefusals(t *testing.T) {
	e := newClusterEnv(t)
	e.store.clusters.tokens["ct2"] = &fakeToken{secret: secret, expires: time.Now().Add(time.Hour), maxUses: 1, grant: Grant{TokenID: "ct2", Cluster: "east"}}
	e.conn.fail = Errorf(CodeInvalid, `cluster "west" range 100.65.0.0/16 overlaps cluster "east" range 100.64.0.0/10`)
	_, err := ConnectCluster(context.Background(), e.token("ct1"), e.mine)
	if !errors.Is(err, ErrInvalidRequest) || !strings.Contains(err.Error(), `range 100.65.0.0/16 overlaps cluster "east"`) {
		t.Errorf("refusal: %v", err)
	}
	e.conn.fail = errors.New("etcd: no leader")
	_, err = ConnectCluster(context.Background(), e.token("ct2"), e.mine)
	if !errors.Is(err, ErrService) || strings.Contains(err.Error(), "no leader") || !strings.Contains(err.Error(), "the cluster connect failed") {
		t.Errorf("failure: %v", err)
	}
}

func TestDisconnectCluster(t *testing.T) {
	e := newClusterEnv(t)
	ctx := context.Background()
	issue := func(ca *pki.CA, cn string, orgs ...string) (cert, key []byte) {
		t.Helper()
		cert, key, err := ca.IssueClient(cn, orgs)
		if err != nil {
			t.Fatal(err)
		}
		return cert, key
	}

	t.Run("no client certificate", func(t *testing.T) {
		hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: e.east.Pool()}}}
		defer hc.CloseIdleConnections()
		resp, err := hc.Post("https://"+e.addr+clusterDisconnectPath, "application/json", strings.NewReader(`{"name":"west"}`))
		if err != nil {
			t.Fatal(err)
		}
		data, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden || !strings.Contains(string(data), "present the cluster credential this cluster issued") {
			t.Errorf("got %d %s", resp.StatusCode, data)
		}
	})

	cert, key := issue(e.east, ClusterCommonName("west"), ClusterOrganization)
	for _, tc := range []struct {
		name      string
		self      string
		cert, key []byte
		want      string
	}{
		{"another cluster's name", "east", cert, key, `certificate "cluster:west" may not disconnect cluster "east"`},
		{"a node certificate", "west", nil, nil, `certificate "node:east/vm-1" may not disconnect cluster "west"`},
		{"cluster name without the organization", "west", nil, nil, `certificate "cluster:west" may not disconnect cluster "west"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, k := tc.cert, tc.key
			switch tc.name {
			case "a node certificate":
				c, k = issue(e.east, NodeCommonName("east", "vm-1"), NodeOrganization)
			case "cluster name without the organization":
				c, k = issue(e.east, ClusterCommonName("west"), NodeOrganization)
			}
			err := DisconnectCluster(ctx, e.addr, tc.self, e.east.CertPEM, c, k)
			if !errors.Is(err, ErrForbidden) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("want forbidden containing %q, got %v", tc.want, err)
			}
		})
	}

	t.Run("a certificate of another CA", func(t *testing.T) {
		c, k := issue(e.west, ClusterCommonName("west"), ClusterOrganization)
		// A TLS client sends no certificate the service's CA did not sign
		// (it is not among the CAs the service asks for), so the service
		// sees none.
		err := DisconnectCluster(ctx, e.addr, "west", e.east.CertPEM, c, k)
		if !errors.Is(err, ErrForbidden) || !strings.Contains(err.Error(), "present the cluster credential this cluster issued") {
			t.Errorf("DisconnectCluster: want forbidden, got %v", err)
		}
		// One that sends it anyway is refused in the handshake.
		pair, err := tls.X509KeyPair(c, k)
		if err != nil {
			t.Fatal(err)
		}
		hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: e.east.Pool(),
			GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &pair, nil }}}}
		defer hc.CloseIdleConnections()
		resp, err := hc.Post("https://"+e.addr+clusterDisconnectPath, "application/json", strings.NewReader(`{"name":"west"}`))
		if err == nil {
			data, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			t.Fatalf("the service answered %d %s", resp.StatusCode, data)
		}
		if !strings.Contains(err.Error(), "tls: unknown certificate authority") {
			t.Errorf("want the handshake refused, got %v", err)
		}
	})

	t.Run("the service's CA is not the one given", func(t *testing.T) {
		err := DisconnectCluster(ctx, e.addr, "west", e.west.CertPEM, cert, key)
		if !errors.Is(err, ErrService) || !strings.Contains(err.Error(), "certificate signed by unknown authority") {
			t.Errorf("want the service refused, got %v", err)
		}
	})

	if len(e.conn.dropped) != 0 {
		t.Fatalf("a refused disconnect dropped %v", e.conn.dropped)
	}
	if err := DisconnectCluster(ctx, e.addr, "west", e.east.CertPEM, cert, key); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(e.conn.dropped) != "[west]" {
		t.Errorf("dropped %v, want [west]", e.conn.dropped)
	}

	for name, args := range map[string][3]string{
		"bad address": {"198.18.0.1", string(e.east.CertPEM), string(cert)},
		"bad CA":      {e.addr, "nope", string(cert)},
		"bad pair":    {e.addr, string(e.east.CertPEM), "nope"},
	} {
		if err := DisconnectCluster(ctx, args[0], "west", []byte(args[1]), []byte(args[2]), key); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	if len(e.conn.dropped) != 1 {
		t.Errorf("dropped %v", e.conn.dropped)
	}
}

func TestClusterTokenRoundTrip(t *testing.T) {
	tok := sample
	tok.Cluster = "east.eu-1"
	if !tok.IsClusterToken() || sample.IsClusterToken() {
		t.Fatal("IsClusterToken")
	}
	got, err := ParseToken(tok.String())
	if err != nil || got != tok {
		t.Fatalf("round trip: %+v %v", got, err)
	}
	// A node token's encoding has no cluster field at all, so tokens made
	// before cluster tokens existed parse as they did.
	raw := tokenJSON(t, sample.String())
	if strings.Contains(raw, `"n"`) {
		t.Errorf("a node token carries the cluster field: %s", raw)
	}
	if raw := tokenJSON(t, tok.String()); !strings.Contains(raw, `"n":"east.eu-1"`) {
		t.Errorf("a cluster token: %s", raw)
	}
}

func tokenJSON(t *testing.T, s string) string {
	t.Helper()
	data, err := base64.RawURLEncoding.DecodeString(strings.TrimPrefix(s, TokenPrefix))
	if err != nil || !json.Valid(data) {
		t.Fatalf("%s: %v", s, err)
	}
	return string(data)
}

func TestClusterTokenRefuses(t *testing.T) {
	base := `"s":"a:1","i":"t1","k":"` + sample.Secret + `","c":"` + sample.CAHash + `"`
	for name, tc := range map[string]struct{ in, want string }{
		"upper-case cluster": {encode(`{` + base + `,"n":"East"}`), `cluster name "East" is not valid`},
		"cluster with slash": {encode(`{` + base + `,"n":"east/1"}`), "cluster name"},
		"long cluster":       {encode(`{` + base + `,"n":"` + strings.Repeat("a", 64) + `"}`), "cluster name"},
		// Empty is no cluster: written out, it is another spelling of a
		// node token.
		"explicit empty cluster": {encode(`{` + base + `,"n":""}`), "canonical"},
		"cluster first":          {encode(`{"n":"east",` + base + `}`), "canonical"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := ParseToken(tc.in)
			if !errors.Is(err, ErrMalformedToken) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("want ErrMalformedToken containing %q, got %v", tc.want, err)
			}
		})
	}
}

// join keeps its own copy of kvstore's mesh ranges (meshctl links join
// and no etcd): they must agree.
func TestMeshRangesAgreeWithKvstore(t *testing.T) {
	if meshRangeV4 != kvstore.MeshRangeV4 || meshRangeV6 != kvstore.MeshRangeV6 {
		t.Errorf("join's mesh ranges %s %s, kvstore's %s %s", meshRangeV4, meshRangeV6, kvstore.MeshRangeV4, kvstore.MeshRangeV6)
	}
	if maxOfferEtcdEndpoints != kvstore.MaxEtcdEndpoints {
		t.Errorf("join allows %d etcd endpoints, kvstore %d", maxOfferEtcdEndpoints, kvstore.MaxEtcdEndpoints)
	}
}

// remoteRecord is the connection record the receiving agent stores for
// an offer (agent.remoteFromOffer).
func remoteRecord(o ClusterOffer) (kvstore.RemoteCluster, error) {
	pool, err := netip.ParsePrefix(o.MeshPool)
	if err != nil {
		return kvstore.RemoteCluster{}, err
	}
	var pods []netip.Prefix
	for _, s := range o.PodCIDRs {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return kvstore.RemoteCluster{}, err
		}
		pods = append(pods, p)
	}
	return kvstore.RemoteCluster{Name: o.Name, ID: o.ID, MeshPool: pool, PodCIDRs: pods, JoinServer: o.JoinServer,
		EtcdEndpoints: o.EtcdEndpoints, CACert: o.CACert, Cert: o.Cert, Key: o.Key, Mode: kvstore.ModeMirror}, nil
}

// Whatever offer Validate accepts, the receiving agent can store: a bad
// offer must be refused before the token is consumed, not after.
func TestValidOffersMakeValidRecords(t *testing.T) {
	west, err := pki.NewCA("west")
	if err != nil {
		t.Fatal(err)
	}
	good := offer(t, west, "west", 2, "100.65.0.0/16", "east")
	good6 := good
	good6.MeshPool, good6.PodCIDRs = "fd00:65::/32", []string{"fd00:244::/48"}
	for _, o := range []ClusterOffer{good, good6} {
		if err := o.Validate(); err != nil {
			t.Fatalf("%s: %v", o.MeshPool, err)
		}
		r, err := remoteRecord(o)
		if err == nil {
			err = r.Validate()
		}
		if err != nil {
			t.Errorf("a valid offer (%s) makes a record kvstore refuses: %v", o.MeshPool, err)
		}
	}
}

// FuzzClusterOffer: any JSON is either refused by Validate with an invalid
// request naming the offer, or is an offer the receiving agent can store.
func FuzzClusterOffer(f *testing.F) {
	ca, err := pki.NewCA("west")
	if err != nil {
		f.Fatal(err)
	}
	good := offer(f, ca, "west", 2, "100.65.0.0/16", "east")
	data, _ := json.Marshal(good)
	f.Add(string(data))
	six := good
	six.MeshPool, six.PodCIDRs = "fd00:65::/32", nil
	data, _ = json.Marshal(six)
	f.Add(string(data))
	for _, tc := range badOffers(f, good, ca) {
		data, _ := json.Marshal(tc.offer)
		f.Add(string(data))
	}
	f.Add(`{}`)
	f.Add(`{"name":"west","id":1,"meshPool":"::ffff:100.64.0.0/106"}`)
	f.Fuzz(func(t *testing.T, s string) {
		var o ClusterOffer
		if json.Unmarshal([]byte(s), &o) != nil {
			return
		}
		err := o.Validate()
		if err != nil {
			var je *Error
			if !errors.As(err, &je) || je.Code != CodeInvalid || !strings.HasPrefix(je.Message, "offer: ") {
				t.Fatalf("a refusal that is not an invalid offer: %#v", err)
			}
			return
		}
		r, err := remoteRecord(o)
		if err == nil {
			err = r.Validate()
		}
		if err != nil {
			t.Fatalf("Validate accepted an offer the receiver cannot store: %v\n%s", err, s)
		}
	})
}
