// Package pki is the mesh's certificate authority: one ECDSA P-256 CA per
// mesh, made by the first node (`meshctl up`) next to its embedded etcd.
// It secures etcd (the server certificate and an administrative client
// certificate, see EnsureBundle) and signs the join service's certificate
// and every joining node's client certificate. Nodes make their own keys
// and send certificate requests, so a private key never crosses the
// network.
//
// The package knows nothing of etcd, the agent or the kernel: the embedded
// etcd server (kvstore/embedded), the join service (agent/join), meshctl
// and the tests all use it, so it sits below all of them.
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

// Validity periods.
const (
	// CAValidity is the CA's lifetime: rotating a mesh's CA means
	// re-issuing every certificate, so it is made to outlive the mesh.
	CAValidity = 10 * 365 * 24 * time.Hour
	// CertValidity is the lifetime of the certificates the CA issues to
	// nodes and the join service: short enough that a leaked one does not
	// stay useful for long, long enough that rotation (later) is not
	// urgent.
	CertValidity = 365 * 24 * time.Hour
	// NodeCertValidity is the lifetime of a node's certificate (its etcd
	// user and its mesh identity): a stolen one is good for at most this
	// long. Agents renew theirs when a third of it is left.
	NodeCertValidity = 30 * 24 * time.Hour
	// clockSkewGrace backdates certificates, so a machine whose clock is
	// behind (a VM before NTP caught up) accepts a certificate made now.
	clockSkewGrace = time.Hour
)

// ErrInvalidRequest is wrapped by every refusal of a certificate request
// (a CSR, or a certificate the CA cannot issue as asked).
var ErrInvalidRequest = errors.New("pki: invalid certificate request")

// CA is a loaded mesh CA with its private key in memory.
type CA struct {
	Cert    *x509.Certificate
	CertPEM []byte
	key     crypto.Signer
	// NodeValidity, when set, replaces NodeCertValidity for the node
	// certificates SignClientCSR makes (tests, short-lived meshes).
	NodeValidity time.Duration
}

// NewCA makes a self-signed CA in memory; commonName is for people
// reading certificates.
func NewCA(commonName string) (*CA, error) {
	if commonName == "" {
		return nil, fmt.Errorf("%w: empty CA common name", ErrInvalidRequest)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generating the CA key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: commonName, Organization: []string{"Weft"}},
		NotBefore:             now.Add(-clockSkewGrace),
		NotAfter:              now.Add(CAValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("self-signing the CA: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parsing the CA certificate: %w", err)
	}
	return &CA{Cert: cert, CertPEM: pemBlock("CERTIFICATE", der), key: key}, nil
}

// LoadCAFiles reads a CA from a certificate and a key file (PEM), such as
// the bundle EnsureBundle keeps for the embedded etcd: the join service
// must sign with the CA etcd trusts. Both files missing wraps
// os.ErrNotExist; one of them missing does not, so that half a CA is
// never taken for no CA and replaced.
func LoadCAFiles(certFile, keyFile string) (*CA, error) {
	dir := filepath.Dir(certFile)
	certName, keyName := filepath.Base(certFile), filepath.Base(keyFile)
	certPEM, certErr := os.ReadFile(certFile)
	keyPEM, keyErr := os.ReadFile(keyFile)
	switch {
	case errors.Is(certErr, os.ErrNotExist) && errors.Is(keyErr, os.ErrNotExist):
		return nil, fmt.Errorf("no mesh CA (%s, %s) in %s: %w", certName, keyName, dir, os.ErrNotExist)
	case certErr != nil:
		// %v, not %w: see the doc comment.
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
	if pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool }); !ok || !pub.Equal(cert.PublicKey) {
		return nil, fmt.Errorf("the mesh CA key %s does not match its certificate %s", keyFile, certFile)
	}
	if !cert.IsCA {
		return nil, fmt.Errorf("%s is not a CA certificate", certFile)
	}
	return &CA{Cert: cert, CertPEM: certPEM, key: key}, nil
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

// leaf describes a certificate the CA issues.
type leaf struct {
	commonName string
	orgs       []string
	// hosts are IP addresses and DNS names; a server certificate needs one.
	hosts          []string
	server, client bool
	validity       time.Duration
}

// IssueServer makes a key and a server certificate for hosts (IP addresses
// and DNS names), good for both server and client authentication (etcd
// peers are both). It returns PEM.
func (ca *CA) IssueServer(commonName string, hosts []string) (certPEM, keyPEM []byte, err error) {
	return ca.issue(leaf{commonName: commonName, hosts: hosts, server: true, client: true, validity: CertValidity})
}

// IssueClient makes a key and a client certificate (meshctl's admin
// credentials). It returns PEM.
func (ca *CA) IssueClient(commonName string, orgs []string) (certPEM, keyPEM []byte, err error) {
	return ca.issue(leaf{commonName: commonName, orgs: orgs, client: true, validity: CertValidity})
}

// IssueClientFor is IssueClient with the certificate's lifetime given
// (admin API credentials, which have no revocation list of their own).
func (ca *CA) IssueClientFor(commonName string, orgs []string, validity time.Duration) (certPEM, keyPEM []byte, err error) {
	if validity <= 0 {
		return nil, nil, fmt.Errorf("%w: validity %v is not positive", ErrInvalidRequest, validity)
	}
	return ca.issue(leaf{commonName: commonName, orgs: orgs, client: true, validity: validity})
}

// issue makes a key and a certificate for it.
func (ca *CA) issue(l leaf) (certPEM, keyPEM []byte, err error) {
	tmpl, err := ca.template(l)
	if err != nil {
		return nil, nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generating a key: %w", err)
	}
	certPEM, err = ca.sign(tmpl, &key.PublicKey)
	if err != nil {
		return nil, nil, err
	}
	keyPEM, err = encodeKey(key)
	return certPEM, keyPEM, err
}

// SignClientCSR signs a node's certificate request as a client
// certificate valid for NodeCertValidity (or ca.NodeValidity). The subject is the CA's choice (commonName, orgs), not the
// requester's: a node proves its key, the join service decides its name.
func (ca *CA) SignClientCSR(csrPEM []byte, commonName string, orgs []string) ([]byte, error) {
	pub, err := CheckCSR(csrPEM)
	if err != nil {
		return nil, err
	}
	validity := NodeCertValidity
	if ca.NodeValidity > 0 {
		validity = ca.NodeValidity
	}
	tmpl, err := ca.template(leaf{commonName: commonName, orgs: orgs, client: true, validity: validity})
	if err != nil {
		return nil, err
	}
	return ca.sign(tmpl, pub)
}

// CheckCSR parses a PEM certificate request, checks its signature (the
// requester holds the key) and that the key is ECDSA P-256.
func CheckCSR(csrPEM []byte) (*ecdsa.PublicKey, error) {
	block, rest := pem.Decode(csrPEM)
	if block == nil || block.Type != "CERTIFICATE REQUEST" || len(strings.TrimSpace(string(rest))) != 0 {
		return nil, fmt.Errorf("%w: not a single PEM CERTIFICATE REQUEST", ErrInvalidRequest)
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidRequest, err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("%w: its signature does not match its key: %v", ErrInvalidRequest, err)
	}
	pub, ok := csr.PublicKey.(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P256() {
		return nil, fmt.Errorf("%w: the key must be ECDSA P-256", ErrInvalidRequest)
	}
	return pub, nil
}

func (ca *CA) template(l leaf) (*x509.Certificate, error) {
	if l.commonName == "" {
		return nil, fmt.Errorf("%w: empty common name", ErrInvalidRequest)
	}
	if l.server && len(l.hosts) == 0 {
		return nil, fmt.Errorf("%w: server certificate %q needs at least one DNS name or IP address", ErrInvalidRequest, l.commonName)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	// A certificate never outlives the CA that vouches for it.
	notAfter := now.Add(l.validity)
	if notAfter.After(ca.Cert.NotAfter) {
		notAfter = ca.Cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: l.commonName, Organization: l.orgs},
		// Backdated by at most a tenth of the lifetime, so that a short-lived
		// certificate's renewal point (a third before its end) stays late.
		NotBefore: now.Add(-min(clockSkewGrace, l.validity/10)),
		NotAfter:  notAfter,
		KeyUsage:  x509.KeyUsageDigitalSignature,
	}
	if l.server {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageServerAuth)
	}
	if l.client {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageClientAuth)
	}
	for _, h := range l.hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	return tmpl, nil
}

func (ca *CA) sign(tmpl *x509.Certificate, pub crypto.PublicKey) ([]byte, error) {
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, pub, ca.key)
	if err != nil {
		return nil, fmt.Errorf("signing a certificate for %q: %w", tmpl.Subject.CommonName, err)
	}
	return pemBlock("CERTIFICATE", der), nil
}

func newSerial() (*big.Int, error) {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("generating a serial number: %w", err)
	}
	// Serial numbers must be positive.
	return n.Add(n, big.NewInt(1)), nil
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

func encodeKey(key crypto.Signer) ([]byte, error) {
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
	err = f.Chmod(0o600)
	if err == nil {
		_, err = f.Write(data)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}
