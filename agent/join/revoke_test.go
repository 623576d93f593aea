package join

import (
	"context"
	"crypto/x509"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/weftmesh/weft/pki"
)

// recordingAdmitter also records the serials of issued certificates.
type recordingAdmitter struct {
	fakeAdmitter
	mu      sync.Mutex
	serials []string
}

func (r *recordingAdmitter) CertificateIssued(_ context.Context, cluster, node, serial string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.serials = append(r.serials, cluster+"/"+node+"="+serial)
	return nil
}

// TestRevokedCertificateIsRefusedOnEveryRoute: CheckCertificate refuses a
// revoked node's certificate with CodeRevoked before any service runs;
// other nodes are served; the serial of each signed certificate reaches a
// CertificateRecorder.
func TestRevokedCertificateIsRefusedOnEveryRoute(t *testing.T) {
	ca, err := pki.NewCA("test")
	if err != nil {
		t.Fatal(err)
	}
	svc := &fakeServices{}
	now := time.Now()
	store := &fakeStore{tokens: map[string]*fakeToken{"t1": {secret: secret, expires: now.Add(time.Hour), maxUses: 5}}}
	adm := &recordingAdmitter{}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := NewServer(ServerConfig{
		CA: ca, Tokens: store, Cluster: "east", Hosts: []string{"127.0.0.1"},
		EtcdEndpoints: []string{"https://198.18.0.1:2379"}, Services: svc, Admitter: adm,
		Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
		CheckCertificate: func(c *x509.Certificate) error {
			if c.Subject.CommonName == NodeCommonName("east", "bad") {
				return errors.New("node east/bad was revoked at noon")
			}
			return nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Shutdown(context.Background()) })
	addr := l.Addr().String()
	ctx := context.Background()

	bad := client(t, ca, addr, NodeCommonName("east", "bad"), []string{NodeOrganization})
	for name, call := range map[string]func() error{
		"identities": func() error { _, err := bad.CreateIdentity(ctx, []string{"vm:app=web"}); return err },
		"ipam":       func() error { _, err := bad.AllocateCIDR(ctx, CIDRRequest{PrefixLength: 24}); return err },
	} {
		err := call()
		if !errors.Is(err, ErrRevoked) || !strings.Contains(err.Error(), "revoked at noon") {
			t.Errorf("%s with a revoked certificate: %v, want ErrRevoked with the reason", name, err)
		}
	}
	if len(svc.callers) != 0 {
		t.Errorf("the service ran for a revoked certificate: %+v", svc.callers)
	}
	good := client(t, ca, addr, NodeCommonName("east", "vm-1"), []string{NodeOrganization})
	if _, err := good.CreateIdentity(ctx, []string{"vm:app=web"}); err != nil {
		t.Errorf("a good node: %v", err)
	}

	tok := Token{Server: addr, ID: "t1", Secret: secret, CAHash: ca.Fingerprint()}
	if _, err := Join(ctx, tok, Request{NodeName: "vm-3"}); err != nil {
		t.Fatal(err)
	}
	if len(adm.serials) != 1 || !strings.HasPrefix(adm.serials[0], "east/vm-3=") || len(adm.serials[0]) <= len("east/vm-3=") {
		t.Errorf("recorded serials: %q", adm.serials)
	}
}
