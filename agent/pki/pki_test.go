package pki

import (
	"crypto/ecdsa"
	"crypto/x509"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCAPersistsAndReloads(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pki")
	ca, created, err := LoadOrCreateCA(dir, "east")
	if err != nil || !created {
		t.Fatalf("create: %v created=%v", err, created)
	}
	for _, f := range []string{CACertFile, CAKeyFile} {
		fi, err := os.Stat(filepath.Join(dir, f))
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v err %v, want 0600", f, fi.Mode().Perm(), err)
		}
	}
	if di, _ := os.Stat(dir); di.Mode().Perm() != 0o700 {
		t.Errorf("pki dir mode %v", di.Mode().Perm())
	}
	again, created, err := LoadOrCreateCA(dir, "east")
	if err != nil || created {
		t.Fatalf("reload: %v created=%v", err, created)
	}
	if again.Fingerprint() != ca.Fingerprint() || !strings.HasPrefix(ca.Fingerprint(), "sha256:") || len(ca.Fingerprint()) != 7+64 {
		t.Errorf("fingerprint changed or malformed: %s vs %s", ca.Fingerprint(), again.Fingerprint())
	}
}

func TestHalfCAIsNotReplaced(t *testing.T) {
	dir := t.TempDir()
	if _, _, err := LoadOrCreateCA(dir, "x"); err != nil {
		t.Fatal(err)
	}
	os.Remove(filepath.Join(dir, CAKeyFile))
	_, _, err := LoadOrCreateCA(dir, "x")
	if err == nil || !strings.Contains(err.Error(), "restore ca-key.pem") {
		t.Fatalf("a CA without its key must be refused, not replaced: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, CAKeyFile)); !errors.Is(err, os.ErrNotExist) {
		t.Error("a new key was written next to the old certificate")
	}
}

func TestMismatchedKeyIsRefused(t *testing.T) {
	a, b := t.TempDir(), t.TempDir()
	LoadOrCreateCA(a, "a")
	LoadOrCreateCA(b, "b")
	data, _ := os.ReadFile(filepath.Join(b, CAKeyFile))
	os.WriteFile(filepath.Join(a, CAKeyFile), data, 0o600)
	if _, err := LoadCA(a); err == nil || !strings.Contains(err.Error(), "does not match") {
		t.Errorf("want a key mismatch error, got %v", err)
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
		if _, err := ca.SignClientCSR(bad, "x", nil); !errors.Is(err, ErrInvalidCSR) {
			t.Errorf("%s: want ErrInvalidCSR, got %v", name, err)
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
	if _, _, err := ca.IssueServer("x", nil); err == nil {
		t.Error("a server certificate without hosts was issued")
	}
}

// The join service signs with the CA the embedded etcd made for itself;
// LoadCAFiles reads it under its own file names.
func TestLoadCAFiles(t *testing.T) {
	dir := t.TempDir()
	ca, _ := NewCA("etcd")
	keyPEM, _ := encodeKey(ca.key)
	WriteFiles(dir, map[string][]byte{"ca.crt": ca.CertPEM, "ca.key": keyPEM})
	got, err := LoadCAFiles(filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key"))
	if err != nil || got.Fingerprint() != ca.Fingerprint() {
		t.Fatalf("%v", err)
	}
	_, err = LoadCAFiles(filepath.Join(dir, "nope.crt"), filepath.Join(dir, "nope.key"))
	if !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing files: %v", err)
	}
}
