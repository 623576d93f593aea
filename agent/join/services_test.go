package join

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/weftmesh/weft/pki"
)

// fakeServices records who asked for what.
type fakeServices struct {
	mu      sync.Mutex
	callers []Caller
}

func (f *fakeServices) CreateIdentity(_ context.Context, c Caller, labels []string) (uint32, error) {
	f.mu.Lock()
	f.callers = append(f.callers, c)
	f.mu.Unlock()
	if len(labels) == 0 {
		return 0, Errorf(CodeInvalid, "no labels")
	}
	if labels[0] == "vm:app=db" {
		return 0, Errorf(CodeForbidden, "vm:app=db is outside the node's grant")
	}
	return 300, nil
}

func (f *fakeServices) AllocateCIDR(_ context.Context, c Caller, req CIDRRequest) (netip.Prefix, error) {
	return netip.PrefixFrom(netip.MustParseAddr("100.64.7.0"), req.PrefixLength), nil
}

func (f *fakeServices) ReleaseCIDR(_ context.Context, c Caller, cidr netip.Prefix) error {
	if c.Node != "vm-1" {
		return Errorf(CodeForbidden, "not yours")
	}
	return nil
}

// fakeAdmitter records admissions and can refuse them.
type fakeAdmitter struct {
	mu   sync.Mutex
	seen []Admission
	fail error
}

func (f *fakeAdmitter) AdmitNode(_ context.Context, a Admission) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.seen = append(f.seen, a)
	return f.fail
}

func startWith(t *testing.T, ca *pki.CA, store *fakeStore, svc NodeServices, adm Admitter) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := NewServer(ServerConfig{
		CA: ca, Tokens: store, Cluster: "east", Hosts: []string{"127.0.0.1"},
		EtcdEndpoints: []string{"https://198.18.0.1:2379"}, Services: svc, Admitter: adm,
		Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(l)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	})
	return l.Addr().String()
}

// client writes a certificate for cn (orgs) and returns a service client
// presenting it.
func client(t *testing.T, ca *pki.CA, addr, cn string, orgs []string) *ServiceClient {
	t.Helper()
	cert, key, err := ca.IssueClient(cn, orgs)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := pki.WriteFiles(dir, map[string][]byte{"ca.pem": ca.CertPEM, "c.pem": cert, "k.pem": key}); err != nil {
		t.Fatal(err)
	}
	c, err := NewServiceClient(addr, filepath.Join(dir, "ca.pem"), filepath.Join(dir, "c.pem"), filepath.Join(dir, "k.pem"))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestNodeServicesAuthenticateTheCaller(t *testing.T) {
	ca, err := pki.NewCA("test")
	if err != nil {
		t.Fatal(err)
	}
	svc := &fakeServices{}
	addr := startWith(t, ca, &fakeStore{tokens: map[string]*fakeToken{}}, svc, nil)
	ctx := context.Background()

	node := client(t, ca, addr, NodeCommonName("east", "vm-1"), []string{NodeOrganization})
	id, err := node.CreateIdentity(ctx, []string{"vm:app=web"})
	if err != nil || id != 300 {
		t.Fatalf("CreateIdentity = %d, %v", id, err)
	}
	if len(svc.callers) != 1 || svc.callers[0] != (Caller{Cluster: "east", Node: "vm-1"}) {
		t.Fatalf("caller seen by the service: %+v", svc.callers)
	}
	cidr, err := node.AllocateCIDR(ctx, CIDRRequest{PrefixLength: 24})
	if err != nil || cidr.String() != "100.64.7.0/24" {
		t.Fatalf("AllocateCIDR = %s, %v", cidr, err)
	}
	if err := node.ReleaseCIDR(ctx, cidr); err != nil {
		t.Fatal(err)
	}
	// The service's refusals arrive with their code and message.
	if _, err := node.CreateIdentity(ctx, []string{"vm:app=db"}); !errors.Is(err, ErrForbidden) || !strings.Contains(err.Error(), "outside the node's grant") {
		t.Fatalf("refused identity: %v", err)
	}
	other := client(t, ca, addr, NodeCommonName("east", "vm-2"), []string{NodeOrganization})
	if err := other.ReleaseCIDR(ctx, cidr); !errors.Is(err, ErrForbidden) {
		t.Fatalf("another node's release: %v", err)
	}

	// Certificates that are not a node's are refused before the service
	// sees anything.
	for name, c := range map[string]*ServiceClient{
		"admin certificate":   client(t, ca, addr, "root", nil),
		"node CN without O":   client(t, ca, addr, NodeCommonName("east", "vm-1"), nil),
		"malformed node CN":   client(t, ca, addr, "node:east/vm-1/x", []string{NodeOrganization}),
		"certificate of a CA": client(t, mustCA(t), addr, NodeCommonName("east", "vm-1"), []string{NodeOrganization}),
	} {
		before := len(svc.callers)
		_, err := c.CreateIdentity(ctx, []string{"vm:app=web"})
		if err == nil || len(svc.callers) != before {
			t.Errorf("%s: %v (service called %d times)", name, err, len(svc.callers)-before)
		}
	}
}

func mustCA(t *testing.T) *pki.CA {
	ca, err := pki.NewCA("other")
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func TestAdmitterRunsBeforeSigning(t *testing.T) {
	ca, err := pki.NewCA("test")
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	store := &fakeStore{tokens: map[string]*fakeToken{
		"t1": {secret: secret, expires: now.Add(time.Hour), maxUses: 5, grant: Grant{TokenID: "t1", Labels: map[string]string{"app": "web"}, AllowLabels: []string{"app=web", "app=worker"}}},
	}}
	adm := &fakeAdmitter{}
	addr := startWith(t, ca, store, nil, adm)
	tok := Token{Server: addr, ID: "t1", Secret: secret, CAHash: ca.Fingerprint()}
	if _, err := Join(context.Background(), tok, Request{NodeName: "vm-1"}); err != nil {
		t.Fatal(err)
	}
	if len(adm.seen) != 1 {
		t.Fatalf("admissions: %+v", adm.seen)
	}
	a := adm.seen[0]
	if a.Cluster != "east" || a.Node != "vm-1" || a.TokenID != "t1" || strings.Join(a.AllowLabels, ",") != "app=web,app=worker" || a.TokenLabels["app"] != "web" {
		t.Fatalf("admission: %+v", a)
	}
	// A failing admission refuses the join: no certificate etcd does not know.
	adm.fail = errors.New("etcd: boom")
	if _, err := Join(context.Background(), tok, Request{NodeName: "vm-2"}); !errors.Is(err, ErrService) {
		t.Fatalf("join with a failing admission: %v", err)
	}
}

func TestParseNodeCommonName(t *testing.T) {
	if c, ok := ParseNodeCommonName(NodeCommonName("east", "vm-1")); !ok || c != (Caller{"east", "vm-1"}) {
		t.Fatalf("round trip: %+v %v", c, ok)
	}
	for _, cn := range []string{"root", "node:east", "node:/vm", "node:east/", "node:east/vm/x", "node:East/vm", "weft-etcd"} {
		if _, ok := ParseNodeCommonName(cn); ok {
			t.Errorf("accepted %q", cn)
		}
	}
}
