package pki

import (
	"crypto/tls"
	"fmt"
	"os"
	"sync"
	"time"
)

// KeyPair serves a certificate and key from files that may be replaced
// while a process runs (a renewed node certificate): every TLS handshake
// asks it for the pair, and it reads the files again when their
// modification time changed. A pair that does not load (caught between
// the two renames of a renewal, or broken) keeps the last good one, so a
// handshake never fails on a half-written renewal.
type KeyPair struct {
	CertFile, KeyFile string

	mu       sync.Mutex
	cert     *tls.Certificate
	certTime time.Time
	keyTime  time.Time
}

// NewKeyPair loads the pair once (an error here is a configuration error).
func NewKeyPair(certFile, keyFile string) (*KeyPair, error) {
	k := &KeyPair{CertFile: certFile, KeyFile: keyFile}
	if _, err := k.Certificate(); err != nil {
		return nil, err
	}
	return k, nil
}

// Certificate returns the current pair.
func (k *KeyPair) Certificate() (*tls.Certificate, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	ci, cerr := os.Stat(k.CertFile)
	ki, kerr := os.Stat(k.KeyFile)
	if k.cert != nil && cerr == nil && kerr == nil && ci.ModTime().Equal(k.certTime) && ki.ModTime().Equal(k.keyTime) {
		return k.cert, nil
	}
	c, err := tls.LoadX509KeyPair(k.CertFile, k.KeyFile)
	if err != nil {
		if k.cert != nil {
			return k.cert, nil
		}
		return nil, fmt.Errorf("pki: loading the certificate %s and key %s: %w", k.CertFile, k.KeyFile, err)
	}
	k.cert = &c
	if cerr == nil && kerr == nil {
		k.certTime, k.keyTime = ci.ModTime(), ki.ModTime()
	}
	return k.cert, nil
}

// GetClientCertificate is for tls.Config.GetClientCertificate.
func (k *KeyPair) GetClientCertificate(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	return k.Certificate()
}

// GetCertificate is for tls.Config.GetCertificate.
func (k *KeyPair) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return k.Certificate()
}

// ReplaceKeyPair writes a new certificate and key over the files of a
// pair, each through a temporary file and a rename, key first: a reader
// sees the old pair, the new pair, or (between the renames) a mismatch
// that KeyPair skips.
func ReplaceKeyPair(certFile, keyFile string, certPEM, keyPEM []byte) error {
	for _, f := range []struct {
		path string
		data []byte
	}{{keyFile, keyPEM}, {certFile, certPEM}} {
		tmp := f.path + ".new"
		if err := os.WriteFile(tmp, f.data, 0o600); err != nil {
			return fmt.Errorf("pki: writing %s: %w", tmp, err)
		}
		if err := os.Rename(tmp, f.path); err != nil {
			return fmt.Errorf("pki: replacing %s: %w", f.path, err)
		}
	}
	return nil
}
