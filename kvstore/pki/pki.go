// Package pki generates the small certificate authority that secures etcd
// for a Weft mesh: a CA, a server certificate for the etcd member and client
// certificates for agents and tools. The embedded etcd server uses it so that
// even a one-machine mesh never speaks plaintext, and tests use it to give a
// separately started etcd process the same TLS setup.
package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// ErrInvalidRequest is wrapped by errors about certificate requests that
// cannot be issued as asked.
var ErrInvalidRequest = errors.New("pki: invalid certificate request")

// DefaultValidity is how long generated certificates stay valid. Rotation is
// a later concern; ten years keeps a lab or small mesh from expiring under
// its users.
const DefaultValidity = 10 * 365 * 24 * time.Hour

// CA is a certificate authority with its private key in memory.
type CA struct {
	Cert    *x509.Certificate
	CertPEM []byte
	key     crypto.Signer
	keyPEM  []byte
}

// NewCA creates a self-signed ECDSA P-256 certificate authority.
func NewCA(commonName string, validity time.Duration) (*CA, error) {
	if commonName == "" {
		return nil, fmt.Errorf("%w: empty CA common name", ErrInvalidRequest)
	}
	if validity <= 0 {
		validity = DefaultValidity
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generating CA key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: commonName, Organization: []string{"Weft"}},
		NotBefore:             now.Add(-time.Hour), // tolerate small clock skew between machines
		NotAfter:              now.Add(validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("self-signing CA: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parsing CA certificate: %w", err)
	}
	keyPEM, err := encodeKey(key)
	if err != nil {
		return nil, err
	}
	return &CA{Cert: cert, CertPEM: pemBlock("CERTIFICATE", der), key: key, keyPEM: keyPEM}, nil
}

// LoadCA reads a CA certificate and its key from PEM files.
func LoadCA(certFile, keyFile string) (*CA, error) {
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return nil, fmt.Errorf("reading CA certificate: %w", err)
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, fmt.Errorf("reading CA key: %w", err)
	}
	cb, _ := pem.Decode(certPEM)
	if cb == nil || cb.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("CA certificate %s: no PEM CERTIFICATE block", certFile)
	}
	cert, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		return nil, fmt.Errorf("CA certificate %s: %w", certFile, err)
	}
	if !cert.IsCA {
		return nil, fmt.Errorf("%s is not a CA certificate", certFile)
	}
	kb, _ := pem.Decode(keyPEM)
	if kb == nil {
		return nil, fmt.Errorf("CA key %s: no PEM block", keyFile)
	}
	k, err := x509.ParsePKCS8PrivateKey(kb.Bytes)
	if err != nil {
		return nil, fmt.Errorf("CA key %s: %w", keyFile, err)
	}
	signer, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("CA key %s: not a signing key", keyFile)
	}
	return &CA{Cert: cert, CertPEM: certPEM, key: signer, keyPEM: keyPEM}, nil
}

// Request describes a leaf certificate.
type Request struct {
	CommonName string
	DNSNames   []string
	IPs        []net.IP
	Server     bool // usable as a TLS server certificate
	Client     bool // usable as a TLS client certificate
	Validity   time.Duration
}

// Issue signs a new leaf certificate and returns it and its key as PEM.
func (ca *CA) Issue(req Request) (certPEM, keyPEM []byte, err error) {
	if req.CommonName == "" {
		return nil, nil, fmt.Errorf("%w: empty common name", ErrInvalidRequest)
	}
	if !req.Server && !req.Client {
		return nil, nil, fmt.Errorf("%w: %q is neither a server nor a client certificate", ErrInvalidRequest, req.CommonName)
	}
	if req.Server && len(req.DNSNames) == 0 && len(req.IPs) == 0 {
		return nil, nil, fmt.Errorf("%w: server certificate %q needs at least one DNS name or IP", ErrInvalidRequest, req.CommonName)
	}
	validity := req.Validity
	if validity <= 0 {
		validity = DefaultValidity
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generating key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, nil, err
	}
	var usage []x509.ExtKeyUsage
	if req.Server {
		usage = append(usage, x509.ExtKeyUsageServerAuth)
	}
	if req.Client {
		usage = append(usage, x509.ExtKeyUsageClientAuth)
	}
	now := time.Now()
	notAfter := now.Add(validity)
	if notAfter.After(ca.Cert.NotAfter) {
		notAfter = ca.Cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: req.CommonName, Organization: []string{"Weft"}},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  usage,
		DNSNames:     req.DNSNames,
		IPAddresses:  req.IPs,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.key)
	if err != nil {
		return nil, nil, fmt.Errorf("signing certificate %q: %w", req.CommonName, err)
	}
	keyPEM, err = encodeKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pemBlock("CERTIFICATE", der), keyPEM, nil
}

// Files names the PEM files of a server bundle written by EnsureBundle.
type Files struct {
	CAFile, CAKeyFile         string
	ServerCertFile, ServerKey string
	ClientCertFile, ClientKey string
}

// BundleFiles returns the file names EnsureBundle uses inside dir.
func BundleFiles(dir string) Files {
	return Files{
		CAFile:         filepath.Join(dir, "ca.crt"),
		CAKeyFile:      filepath.Join(dir, "ca.key"),
		ServerCertFile: filepath.Join(dir, "server.crt"),
		ServerKey:      filepath.Join(dir, "server.key"),
		ClientCertFile: filepath.Join(dir, "client.crt"),
		ClientKey:      filepath.Join(dir, "client.key"),
	}
}

// EnsureBundle makes sure dir holds a CA, a server certificate valid for
// hosts (DNS names or IP literals) and an administrative client certificate.
// Existing files are kept, so a restarted server keeps the identity its
// clients already trust; a new server certificate is issued only when it is
// missing.
func EnsureBundle(dir string, hosts []string) (Files, error) {
	f := BundleFiles(dir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return f, fmt.Errorf("creating certificate directory: %w", err)
	}
	var ca *CA
	if exists(f.CAFile) && exists(f.CAKeyFile) {
		c, err := LoadCA(f.CAFile, f.CAKeyFile)
		if err != nil {
			return f, err
		}
		ca = c
	} else {
		c, err := NewCA("weft-etcd-ca", 0)
		if err != nil {
			return f, err
		}
		if err := writeFile(f.CAFile, c.CertPEM, 0o644); err != nil {
			return f, err
		}
		if err := writeFile(f.CAKeyFile, c.keyPEM, 0o600); err != nil {
			return f, err
		}
		ca = c
		// A new CA invalidates any leaf certificates left from an older one.
		_ = os.Remove(f.ServerCertFile)
		_ = os.Remove(f.ClientCertFile)
	}
	if !exists(f.ServerCertFile) || !exists(f.ServerKey) {
		req := Request{CommonName: "weft-etcd", Server: true, Client: true}
		for _, h := range hosts {
			if ip := net.ParseIP(h); ip != nil {
				req.IPs = append(req.IPs, ip)
			} else {
				req.DNSNames = append(req.DNSNames, h)
			}
		}
		cert, key, err := ca.Issue(req)
		if err != nil {
			return f, err
		}
		if err := writeFile(f.ServerKey, key, 0o600); err != nil {
			return f, err
		}
		if err := writeFile(f.ServerCertFile, cert, 0o644); err != nil {
			return f, err
		}
	}
	if !exists(f.ClientCertFile) || !exists(f.ClientKey) {
		cert, key, err := ca.Issue(Request{CommonName: "root", Client: true})
		if err != nil {
			return f, err
		}
		if err := writeFile(f.ClientKey, key, 0o600); err != nil {
			return f, err
		}
		if err := writeFile(f.ClientCertFile, cert, 0o644); err != nil {
			return f, err
		}
	}
	return f, nil
}

func newSerial() (*big.Int, error) {
	s, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("generating serial number: %w", err)
	}
	return s, nil
}

func encodeKey(k crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, fmt.Errorf("encoding key: %w", err)
	}
	return pemBlock("PRIVATE KEY", der), nil
}

func pemBlock(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

func writeFile(path string, data []byte, mode os.FileMode) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, mode); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}
