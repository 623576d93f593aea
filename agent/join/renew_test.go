package join

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/weftmesh/weft/pki"
)

// nodeFiles signs a node certificate for cn with the CA's node validity
// and writes it with its key; it returns the two paths and a client.
func nodeFiles(t *testing.T, ca *pki.CA, addr, cn string) (certFile, keyFile string, c *ServiceClient) {
	t.Helper()
	keyPEM, csrPEM, err := pki.NewKeyAndCSR(cn)
	if err != nil {
		t.Fatal(err)
	}
	certPEM, err := ca.SignClientCSR(csrPEM, cn, []string{NodeOrganization})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := pki.WriteFiles(dir, map[string][]byte{"ca.pem": ca.CertPEM, "node.pem": certPEM, "node-key.pem": keyPEM}); err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "node.pem"), filepath.Join(dir, "node-key.pem")
	c, err = NewServiceClient(addr, filepath.Join(dir, "ca.pem"), certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile, c
}

func certOf(t *testing.T, path string) (cn string, serial string, notAfter time.Time) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	c, err := pki.ParseCertPEM(data)
	if err != nil {
		t.Fatal(err)
	}
	return c.Subject.CommonName, c.SerialNumber.String(), c.NotAfter
}

func TestRenewalReplacesTheCertificateWhenDue(t *testing.T) {
	ca := mustCA(t)
	ca.NodeValidity = time.Hour
	addr := startWith(t, ca, &fakeStore{tokens: map[string]*fakeToken{}}, &fakeServices{}, nil)
	certFile, keyFile, c := nodeFiles(t, ca, addr, NodeCommonName("east", "vm-1"))
	ctx := context.Background()
	cn0, serial0, until0 := certOf(t, certFile)

	// Two thirds of the lifetime left: nothing to do.
	if renewed, err := RenewFiles(ctx, c, certFile, keyFile, time.Now()); err != nil || renewed {
		t.Fatalf("renewing a fresh certificate: %v, %v", renewed, err)
	}
	// Less than a third left: a new key and certificate, same name, no earlier
	// expiry; the client's next connection presents it.
	if renewed, err := RenewFiles(ctx, c, certFile, keyFile, until0.Add(-15*time.Minute)); err != nil || !renewed {
		t.Fatalf("renewing a due certificate: %v, %v", renewed, err)
	}
	cn1, serial1, until1 := certOf(t, certFile)
	if cn1 != cn0 || serial1 == serial0 || until1.Before(until0) {
		t.Fatalf("renewed certificate %s #%s until %s; was %s #%s until %s", cn1, serial1, until1, cn0, serial0, until0)
	}
	if _, err := pki.NewKeyPair(certFile, keyFile); err != nil {
		t.Fatalf("the renewed files are not a pair: %v", err)
	}
	c.hc.CloseIdleConnections()
	if renewed, err := RenewFiles(ctx, c, certFile, keyFile, until1.Add(-10*time.Minute)); err != nil || !renewed {
		t.Fatalf("renewing with the renewed certificate: %v, %v", renewed, err)
	}
}

func TestRenewalNeedsANodeCertificate(t *testing.T) {
	ca := mustCA(t)
	addr := startWith(t, ca, &fakeStore{tokens: map[string]*fakeToken{}}, &fakeServices{}, nil)
	// An admin certificate (CN=root) is not a node: no renewal through the
	// node services.
	c := client(t, ca, addr, "root", nil)
	_, csrPEM, err := pki.NewKeyAndCSR("node:east/vm-1")
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Renew(context.Background(), csrPEM)
	var je *Error
	if !errors.As(err, &je) || je.Code != CodeForbidden {
		t.Fatalf("renewal with an admin certificate = %v, want forbidden", err)
	}
	// A node asking for another node's name gets its own: the name is the
	// caller's, never the request's.
	_, _, nc := nodeFiles(t, ca, addr, NodeCommonName("east", "vm-2"))
	got, err := nc.Renew(context.Background(), csrPEM)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := pki.ParseCertPEM(got)
	if err != nil || cert.Subject.CommonName != NodeCommonName("east", "vm-2") {
		t.Fatalf("renewal asking for vm-1 by vm-2 got %v, %v; want vm-2's name", cert.Subject.CommonName, err)
	}
}
