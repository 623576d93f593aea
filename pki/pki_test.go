package pki

import (
	"crypto/ecdsa"
	"crypto/x509"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestBundleChainsAndIsKept(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pki")
	f, err := EnsureBundle(dir, []string{"127.0.0.1", "etcd.example"})
	if err != nil {
		t.Fatal(err)
	}
	ca, err := LoadCAFiles(f.CAFile, f.CAKeyFile)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		file  string
		usage x509.ExtKeyUsage
		name  string
	}{
		{f.ServerCertFile, x509.ExtKeyUsageServerAuth, "etcd.example"},
		{f.ServerCertFile, x509.ExtKeyUsageServerAuth, "127.0.0.1"},
		{f.ServerCertFile, x509.ExtKeyUsageClientAuth, ""}, // etcd peers are both
		{f.ClientCertFile, x509.ExtKeyUsageClientAuth, ""},
	} {
		data, _ := os.ReadFile(tc.file)
		cert, err := ParseCertPEM(data)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := cert.Verify(x509.VerifyOptions{Roots: ca.Pool(), DNSName: tc.name, KeyUsages: []x509.ExtKeyUsage{tc.usage}}); err != nil {
			t.Errorf("%s for %q: %v", tc.file, tc.name, err)
		}
	}
	for _, file := range []string{f.CAFile, f.CAKeyFile, f.ServerCertFile, f.ServerKey, f.ClientCertFile, f.ClientKey} {
		if st, err := os.Stat(file); err != nil || st.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v, want 0600 (%v)", file, st.Mode().Perm(), err)
		}
	}
	if di, _ := os.Stat(dir); di.Mode().Perm() != 0o700 {
		t.Errorf("bundle directory mode %v, want 0700", di.Mode().Perm())
	}
	before, _ := os.ReadFile(f.ServerCertFile)
	if _, err := EnsureBundle(dir, []string{"127.0.0.1"}); err != nil {
		t.Fatal(err)
	}
	after, _ := os.ReadFile(f.ServerCertFile)
	if string(before) != string(after) {
		t.Fatal("EnsureBundle replaced an existing server certificate")
	}
	again, err := LoadCAFiles(f.CAFile, f.CAKeyFile)
	if err != nil || again.Fingerprint() != ca.Fingerprint() || !strings.HasPrefix(ca.Fingerprint(), "sha256:") || len(ca.Fingerprint()) != 7+64 {
		t.Errorf("CA changed or fingerprint malformed: %s vs %s (%v)", ca.Fingerprint(), again.Fingerprint(), err)
	}

	// A lost leaf is issued again by the same CA.
	os.Remove(f.ClientKey)
	if _, err := EnsureBundle(dir, nil); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(f.ClientCertFile)
	if cert, err := ParseCertPEM(data); err != nil || cert.CheckSignatureFrom(ca.Cert) != nil {
		t.Errorf("re-issued client certificate: %v", err)
	}
}

func TestHalfCAIsNotReplaced(t *testing.T) {
	dir := t.TempDir()
	f, err := EnsureBundle(dir, []string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	os.Remove(f.CAKeyFile)
	_, err = EnsureBundle(dir, []string{"127.0.0.1"})
	if err == nil || !strings.Contains(err.Error(), "restore ca.key") {
		t.Fatalf("a CA without its key must be refused, not replaced: %v", err)
	}
	if _, err := os.Stat(f.CAKeyFile); !errors.Is(err, os.ErrNotExist) {
		t.Error("a new key was written next to the old certificate")
	}
}

func TestMismatchedKeyIsRefused(t *testing.T) {
	a, _ := EnsureBundle(t.TempDir(), []string{"127.0.0.1"})
	b, _ := EnsureBundle(t.TempDir(), []string{"127.0.0.1"})
	data, _ := os.ReadFile(b.CAKeyFile)
	os.WriteFile(a.CAKeyFile, data, 0o600)
	if _, err := LoadCAFiles(a.CAFile, a.CAKeyFile); err == nil || !strings.Contains(err.Error(), "does not match") {
		t.Errorf("want a key mismatch error, got %v", err)
	}
	if _, err := LoadCAFiles(a.ServerCertFile, a.ServerKey); err == nil || !strings.Contains(err.Error(), "not a CA certificate") {
		t.Errorf("a leaf loaded as a CA: %v", err)
	}
	_, err := LoadCAFiles(filepath.Join(t.TempDir(), "nope.crt"), filepath.Join(t.TempDir(), "nope.key"))
	if !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing files: %v", err)
	}
}

func TestSignClientCSR(t *testing.T) {
	ca, err := NewCA("t")
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, csrPEM, err := NewKeyAndCSR("whatever-the-node-asks")
	if err != nil {
		t.Fatal(err)
	}
	certPEM, err := ca.SignClientCSR(csrPEM, "node:east/vm-1", []string{"weft:nodes"})
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ParseCertPEM(certPEM)
	if err != nil {
		t.Fatal(err)
	}
	if cert.Subject.CommonName != "node:east/vm-1" {
		t.Errorf("the CA decides the subject: got %q", cert.Subject.CommonName)
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: ca.Pool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("client cert does not verify: %v", err)
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: ca.Pool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err == nil {
		t.Error("a node's client certificate must not be usable as a server certificate")
	}
	if cert.NotAfter.After(time.Now().Add(NodeCertValidity)) || cert.NotAfter.Before(time.Now().Add(NodeCertValidity-time.Hour)) {
		t.Errorf("a node certificate expires %v, want about %v from now", cert.NotAfter, NodeCertValidity)
	}
	key, err := ParseKeyPEM(keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	if !cert.PublicKey.(*ecdsa.PublicKey).Equal(key.Public()) {
		t.Error("certificate is not for the node's key")
	}

	for name, bad := range map[string][]byte{
		"garbage":  []byte("hello"),
		"cert":     ca.CertPEM,
		"trailing": append(append([]byte{}, csrPEM...), csrPEM...),
		"tampered": []byte(strings.Replace(string(csrPEM), string(csrPEM[100:104]), "AAAA", 1)),
	} {
		if _, err := ca.SignClientCSR(bad, "x", nil); !errors.Is(err, ErrInvalidRequest) {
			t.Errorf("%s: want ErrInvalidRequest, got %v", name, err)
		}
	}
}

func TestIssueServer(t *testing.T) {
	ca, _ := NewCA("t")
	certPEM, keyPEM, err := ca.IssueServer("join", []string{"198.18.0.1", "seed.example"})
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := ParseCertPEM(certPEM)
	for _, host := range []string{"198.18.0.1", "seed.example"} {
		if _, err := cert.Verify(x509.VerifyOptions{Roots: ca.Pool(), DNSName: host}); err != nil {
			t.Errorf("%s: %v", host, err)
		}
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: ca.Pool(), DNSName: "198.18.0.2"}); err == nil {
		t.Error("verified for a host it was not issued for")
	}
	if _, err := ParseKeyPEM(keyPEM); err != nil {
		t.Error(err)
	}
}

func TestRefusesBadRequests(t *testing.T) {
	if _, err := NewCA(""); !errors.Is(err, ErrInvalidRequest) {
		t.Errorf("NewCA(\"\") = %v, want ErrInvalidRequest", err)
	}
	ca, _ := NewCA("t")
	for name, issue := range map[string]func() error{
		"server without hosts":   func() error { _, _, err := ca.IssueServer("x", nil); return err },
		"server without a name":  func() error { _, _, err := ca.IssueServer("", []string{"127.0.0.1"}); return err },
		"client without a name":  func() error { _, _, err := ca.IssueClient("", nil); return err },
		"signing without a name": func() error { _, csr, _ := NewKeyAndCSR("x"); _, err := ca.SignClientCSR(csr, "", nil); return err },
	} {
		if err := issue(); !errors.Is(err, ErrInvalidRequest) {
			t.Errorf("%s: %v, want ErrInvalidRequest", name, err)
		}
	}
}
