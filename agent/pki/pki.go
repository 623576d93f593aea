// Package pki is the mesh's certificate authority: one ECDSA P-256 CA per
// mesh, kept in the state directory of the node that created it (the
// first node, `meshctl up`), which signs the etcd and join-service server
// certificates and every node's client certificate. Nodes make their own
// keys and send certificate requests, so a private key never crosses the
// network.
package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// File names inside a PKI directory.
const (
	CACertFile = "ca.pem"
	CAKeyFile  = "ca-key.pem"
)

// Validity periods. Node certificates are short enough that a leaked one
// does not stay useful for long, long enough that rotation (later) is not
// urgent.
const (
	CAValidity     = 10 * 365 * 24 * time.Hour
	CertValidity   = 365 * 24 * time.Hour
	clockSkewGrace = 5 * time.Minute
)

// ErrInvalidCSR is wrapped by every refusal of a certificate request.
var ErrInvalidCSR = errors.New("pki: invalid certificate request")

// CA is a loaded mesh CA.
type CA struct {
	Cert    *x509.Certificate
	CertPEM []byte
	key     *ecdsa.PrivateKey
}

// LoadOrCreateCA loads the CA from dir, or creates one (named after the
// mesh's cluster, for people reading certificates) when dir holds none.
// created says which happened. The directory is 0700, the files 0600.
func LoadOrCreateCA(dir, name string) (ca *CA, created bool, err error) {
	ca, err = LoadCA(dir)
	if err == nil {
		return ca, false, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, false, err
	}
	// Half a CA (a certificate without its key) is refused by LoadCA
	// rather than overwritten: it is somebody's mesh.
	ca, err = NewCA(name)
	if err != nil {
		return nil, false, err
	}
	keyPEM, err := encodeKey(ca.key)
	if err != nil {
		return nil, false, err
	}
	if err := WriteFiles(dir, map[string][]byte{CAKeyFile: keyPEM, CACertFile: ca.CertPEM}); err != nil {
		return nil, false, fmt.Errorf("saving the mesh CA: %w", err)
	}
	return ca, true, nil
}

// NewCA makes a CA in memory.
func NewCA(name string) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generating the CA key: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "weft mesh CA " + name, Organization: []string{"weft"}},
		NotBefore:             now.Add(-clockSkewGrace),
		NotAfter:              now.Add(CAValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("self-signing the CA: %w", err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &CA{Cert: cert, CertPEM: pemBlock("CERTIFICATE", der), key: key}, nil
}

// LoadCA reads the CA from dir. A missing CA wraps os.ErrNotExist.
func LoadCA(dir string) (*CA, error) {
	return LoadCAFiles(filepath.Join(dir, CACertFile), filepath.Join(dir, CAKeyFile))
}

// LoadCAFiles reads a CA from a certificate and a key file (PEM), such as
// the CA the embedded etcd made for itself: the join service must sign
// with the CA etcd trusts. Both files missing wraps os.ErrNotExist.
func LoadCAFiles(certFile, keyFile string) (*CA, error) {
	dir := filepath.Dir(certFile)
	certName, keyName := filepath.Base(certFile), filepath.Base(keyFile)
	certPEM, certErr := os.ReadFile(certFile)
	keyPEM, keyErr := os.ReadFile(keyFile)
	switch {
	case errors.Is(certErr, os.ErrNotExist) && errors.Is(keyErr, os.ErrNotExist):
		return nil, fmt.Errorf("no mesh CA (%s, %s) in %s: %w", certName, keyName, dir, os.ErrNotExist)
	case certErr != nil:
		// %v, not %w: half a CA must not look like no CA to LoadOrCreateCA.
		return nil, fmt.Errorf("reading the mesh CA certificate (the key is there; restore %s from a backup rather than making a new CA): %v", certName, certErr)
	case keyErr != nil:
		return nil, fmt.Errorf("reading the mesh CA key (the certificate is there; restore %s from a backup rather than making a new CA): %v", keyName, keyErr)
	}
	cert, err := ParseCertPEM(certPEM)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", certFile, err)
	}
	key, err := ParseKeyPEM(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", keyFile, err)
	}
	ek, ok := key.(*ecdsa.PrivateKey)
	if !ok || !ek.PublicKey.Equal(cert.PublicKey) {
		return nil, fmt.Errorf("the mesh CA key %s does not match its certificate %s", keyFile, certFile)
	}
	if !cert.IsCA {
		return nil, fmt.Errorf("%s is not a CA certificate", certFile)
	}
	return &CA{Cert: cert, CertPEM: certPEM, key: ek}, nil
}

// Fingerprint is the CA's pin: "sha256:" and the hex SHA-256 of its DER
// certificate. Join tokens carry it.
func (ca *CA) Fingerprint() string { return Fingerprint(ca.Cert) }

// Fingerprint returns "sha256:<hex>" of a certificate's DER encoding.
func Fingerprint(c *x509.Certificate) string {
	sum := sha256.Sum256(c.Raw)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// Pool returns a pool holding only this CA.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Cert)
	return p
}

// IssueServer makes a key and a server certificate for hosts (IP addresses
// and DNS names), good for both server and client authentication (etcd
// peers are both). It returns PEM.
func (ca *CA) IssueServer(commonName string, hosts []string) (certPEM, keyPEM []byte, err error) {
	if len(hosts) == 0 {
		return nil, nil, errors.New("pki: a server certificate needs at least one host")
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	tmpl := ca.template(commonName, nil, CertValidity)
	tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	certPEM, err = ca.sign(tmpl, &key.PublicKey)
	if err != nil {
		return nil, nil, err
	}
	keyPEM, err = encodeKey(key)
	return certPEM, keyPEM, err
}

// IssueClient makes a key and a client certificate (meshctl's admin
// credentials). It returns PEM.
func (ca *CA) IssueClient(commonName string, orgs []string) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	tmpl := ca.template(commonName, orgs, CertValidity)
	tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	certPEM, err = ca.sign(tmpl, &key.PublicKey)
	if err != nil {
		return nil, nil, err
	}
	keyPEM, err = encodeKey(key)
	return certPEM, keyPEM, err
}

// SignClientCSR signs a node's certificate request as a client
// certificate. The subject is the CA's choice (commonName, orgs), not the
// requester's: a node proves its key, the join service decides its name.
func (ca *CA) SignClientCSR(csrPEM []byte, commonName string, orgs []string) ([]byte, error) {
	pub, err := CheckCSR(csrPEM)
	if err != nil {
		return nil, err
	}
	tmpl := ca.template(commonName, orgs, CertValidity)
	tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	return ca.sign(tmpl, pub)
}

// CheckCSR parses a PEM certificate request, checks its signature (the
// requester holds the key) and that the key is ECDSA P-256.
func CheckCSR(csrPEM []byte) (*ecdsa.PublicKey, error) {
	block, rest := pem.Decode(csrPEM)
	if block == nil || block.Type != "CERTIFICATE REQUEST" || len(strings.TrimSpace(string(rest))) != 0 {
		return nil, fmt.Errorf("%w: not a single PEM CERTIFICATE REQUEST", ErrInvalidCSR)
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidCSR, err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("%w: its signature does not match its key: %v", ErrInvalidCSR, err)
	}
	pub, ok := csr.PublicKey.(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P256() {
		return nil, fmt.Errorf("%w: the key must be ECDSA P-256", ErrInvalidCSR)
	}
	return pub, nil
}

func (ca *CA) template(cn string, orgs []string, validity time.Duration) *x509.Certificate {
	now := time.Now()
	notAfter := now.Add(validity)
	if notAfter.After(ca.Cert.NotAfter) {
		notAfter = ca.Cert.NotAfter
	}
	return &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: cn, Organization: orgs},
		NotBefore:    now.Add(-clockSkewGrace),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
	}
}

func (ca *CA) sign(tmpl *x509.Certificate, pub crypto.PublicKey) ([]byte, error) {
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, pub, ca.key)
	if err != nil {
		return nil, fmt.Errorf("signing a certificate for %q: %w", tmpl.Subject.CommonName, err)
	}
	return pemBlock("CERTIFICATE", der), nil
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic("pki: no randomness: " + err.Error()) // crypto/rand never fails on Linux
	}
	return n.Add(n, big.NewInt(1))
}

// NewKeyAndCSR makes a node's P-256 key and a certificate request for it.
func NewKeyAndCSR(commonName string) (keyPEM, csrPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: commonName}}, key)
	if err != nil {
		return nil, nil, fmt.Errorf("making the certificate request: %w", err)
	}
	keyPEM, err = encodeKey(key)
	return keyPEM, pemBlock("CERTIFICATE REQUEST", der), err
}

func encodeKey(key *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encoding a private key: %w", err)
	}
	return pemBlock("PRIVATE KEY", der), nil
}

func pemBlock(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

// ParseCertPEM parses the first certificate of a PEM file.
func ParseCertPEM(data []byte) (*x509.Certificate, error) {
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, errors.New("pki: no PEM CERTIFICATE found")
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("pki: parsing the certificate: %w", err)
	}
	return c, nil
}

// ParseKeyPEM parses a PKCS#8 or SEC 1 ("EC PRIVATE KEY") private key.
func ParseKeyPEM(data []byte) (crypto.Signer, error) {
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, errors.New("pki: no PEM private key found")
	}
	var key any
	var err error
	switch block.Type {
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("pki: unexpected PEM block %q, want a PRIVATE KEY", block.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("pki: parsing the private key: %w", err)
	}
	s, ok := key.(crypto.Signer)
	if !ok {
		return nil, errors.New("pki: the private key cannot sign")
	}
	return s, nil
}

// WriteFiles writes each file into dir (created 0700) with mode 0600,
// atomically (temporary file and rename), so a crash never leaves half a
// key behind.
func WriteFiles(dir string, files map[string][]byte) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("creating %s: %w", dir, err)
	}
	for name, data := range files {
		if err := writeAtomic(filepath.Join(dir, name), data); err != nil {
			return err
		}
	}
	return nil
}

func writeAtomic(path string, data []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	tmp := f.Name()
	defer os.Remove(tmp) // no-op after the rename
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}
