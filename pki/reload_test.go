package pki

import (
	"crypto/tls"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestKeyPairFollowsReplacedFiles(t *testing.T) {
	ca, err := NewCA("test")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "node.pem"), filepath.Join(dir, "node-key.pem")
	issue := func(cn string) ([]byte, []byte) {
		keyPEM, csrPEM, err := NewKeyAndCSR(cn)
		if err != nil {
			t.Fatal(err)
		}
		certPEM, err := ca.SignClientCSR(csrPEM, cn, nil)
		if err != nil {
			t.Fatal(err)
		}
		return certPEM, keyPEM
	}
	c1, k1 := issue("node:c/one")
	if err := ReplaceKeyPair(certFile, keyFile, c1, k1); err != nil {
		t.Fatal(err)
	}
	kp, err := NewKeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	cn := func() string {
		t.Helper()
		c, err := kp.GetClientCertificate(&tls.CertificateRequestInfo{})
		if err != nil {
			t.Fatal(err)
		}
		leaf, err := ParseCertPEM(pemBlock("CERTIFICATE", c.Certificate[0]))
		if err != nil {
			t.Fatal(err)
		}
		return leaf.Subject.CommonName
	}
	if got := cn(); got != "node:c/one" {
		t.Fatalf("first pair: %s", got)
	}
	// A renewal replaces both files: the next handshake uses the new pair.
	time.Sleep(10 * time.Millisecond) // a new modification time
	c2, k2 := issue("node:c/two")
	if err := ReplaceKeyPair(certFile, keyFile, c2, k2); err != nil {
		t.Fatal(err)
	}
	if got := cn(); got != "node:c/two" {
		t.Fatalf("after the renewal: %s", got)
	}
	// Caught between the renames (a new key, the old certificate): the
	// last good pair, not a failed handshake.
	time.Sleep(10 * time.Millisecond)
	_, k3 := issue("node:c/three")
	if err := os.WriteFile(keyFile, k3, 0o600); err != nil {
		t.Fatal(err)
	}
	if got := cn(); got != "node:c/two" {
		t.Fatalf("with a mismatched pair on disk: %s, want the last good one", got)
	}
}
