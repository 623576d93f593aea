package pki

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"testing"
)

func TestBundleChainsAndIsKept(t *testing.T) {
	dir := t.TempDir()
	f, err := EnsureBundle(dir, []string{"127.0.0.1", "etcd.example"})
	if err != nil {
		t.Fatal(err)
	}
	ca, err := LoadCA(f.CAFile, f.CAKeyFile)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	for _, tc := range []struct {
		file  string
		usage x509.ExtKeyUsage
		name  string
	}{
		{f.ServerCertFile, x509.ExtKeyUsageServerAuth, "etcd.example"},
		{f.ServerCertFile, x509.ExtKeyUsageServerAuth, "127.0.0.1"},
		{f.ClientCertFile, x509.ExtKeyUsageClientAuth, ""},
	} {
		data, _ := os.ReadFile(tc.file)
		b, _ := pem.Decode(data)
		cert, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, DNSName: tc.name, KeyUsages: []x509.ExtKeyUsage{tc.usage}}); err != nil {
			t.Errorf("%s for %q: %v", tc.file, tc.name, err)
		}
	}
	if st, _ := os.Stat(f.CAKeyFile); st.Mode().Perm() != 0o600 {
		t.Errorf("CA key mode %v, want 0600", st.Mode().Perm())
	}
	before, _ := os.ReadFile(f.ServerCertFile)
	if _, err := EnsureBundle(dir, []string{"127.0.0.1"}); err != nil {
		t.Fatal(err)
	}
	after, _ := os.ReadFile(f.ServerCertFile)
	if string(before) != string(after) {
		t.Fatal("EnsureBundle replaced an existing server certificate")
	}
}

func TestIssueRefusesBadRequests(t *testing.T) {
	ca, err := NewCA("test", 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, req := range []Request{
		{},
		{CommonName: "x"},
		{CommonName: "x", Server: true},
	} {
		if _, _, err := ca.Issue(req); !errors.Is(err, ErrInvalidRequest) {
			t.Errorf("Issue(%+v) = %v, want ErrInvalidRequest", req, err)
		}
	}
}
