package meshtls

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"

	"github.com/weftmesh/weft/pki"
)

// nodeCreds issues a client-only node certificate, as the join service
// does.
func nodeCreds(t *testing.T, ca *pki.CA, cn string) *Credentials {
	t.Helper()
	certPEM, keyPEM, err := ca.IssueClient(cn, []string{"weft:nodes"})
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return New(cert, ca.Pool())
}

func serve(t *testing.T, c *Credentials) netip.AddrPort {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "hello "+r.TLS.PeerCertificates[0].Subject.CommonName+" at "+r.URL.Path)
	})}
	go srv.Serve(tls.NewListener(l, c.ServerConfig()))
	t.Cleanup(func() { srv.Close() })
	return netip.MustParseAddrPort(l.Addr().String())
}

func get(c *Credentials, addr netip.AddrPort) (string, error) {
	cl := &http.Client{Transport: c.Transport()}
	resp, err := cl.Get("https://" + addr.String() + "/v1/x")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

func TestNodeCertificatesAuthenticateBothWays(t *testing.T) {
	ca, err := pki.NewCA("east")
	if err != nil {
		t.Fatal(err)
	}
	addr := serve(t, nodeCreds(t, ca, "node:east/b"))
	got, err := get(nodeCreds(t, ca, "node:east/a"), addr)
	if err != nil {
		t.Fatal(err)
	}
	if got != "hello node:east/a at /v1/x" {
		t.Fatalf("answer %q", got)
	}

	other, _ := pki.NewCA("intruder")
	if _, err := get(nodeCreds(t, other, "node:east/a"), addr); err == nil {
		t.Fatal("a client with a certificate from another CA was served")
	}
	// A server from another CA is refused by the client.
	bad := serve(t, nodeCreds(t, other, "node:east/z"))
	if _, err := get(nodeCreds(t, ca, "node:east/a"), bad); err == nil || !strings.Contains(err.Error(), "mesh CA") {
		t.Fatalf("a server from another CA: err = %v", err)
	}
}

func TestRelayForwardsAndReportsAnUnreachableAgent(t *testing.T) {
	ca, _ := pki.NewCA("east")
	addr := serve(t, nodeCreds(t, ca, "node:east/b"))
	a := nodeCreds(t, ca, "node:east/a")
	front := httptest.NewServer(Relay(a.Transport(), addr))
	defer front.Close()
	resp, err := http.Get(front.URL + "/v1/flows")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(b) != "hello node:east/a at /v1/flows" {
		t.Fatalf("relayed answer %q", b)
	}

	l, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := netip.MustParseAddrPort(l.Addr().String())
	l.Close()
	front2 := httptest.NewServer(Relay(a.Transport(), dead))
	defer front2.Close()
	resp, err = http.Get(front2.URL + "/v1/flows")
	if err != nil {
		t.Fatal(err)
	}
	b, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(b), "does not answer over the mesh") {
		t.Fatalf("unreachable agent: %d %s", resp.StatusCode, b)
	}
}

// TestPeerCheckRefusesRevokedCertificates: a certificate from the mesh CA
// that the peer check refuses (a revoked node) is refused by a server and
// by a client; the others still pass.
func TestPeerCheckRefusesRevokedCertificates(t *testing.T) {
	ca, _ := pki.NewCA("east")
	revoked := func(c *x509.Certificate) error {
		if c.Subject.CommonName == "node:east/bad" {
			return errors.New("revoked by an admin")
		}
		return nil
	}
	srv := nodeCreds(t, ca, "node:east/b")
	srv.SetPeerCheck(revoked)
	addr := serve(t, srv)
	if got, err := get(nodeCreds(t, ca, "node:east/a"), addr); err != nil || !strings.HasPrefix(got, "hello node:east/a") {
		t.Fatalf("a good node: %q, %v", got, err)
	}
	if got, err := get(nodeCreds(t, ca, "node:east/bad"), addr); err == nil {
		t.Fatalf("a revoked node was served: %q", got)
	}
	// The client side refuses a revoked server.
	a := nodeCreds(t, ca, "node:east/a")
	a.SetPeerCheck(revoked)
	bad := serve(t, nodeCreds(t, ca, "node:east/bad"))
	if _, err := get(a, bad); err == nil || !strings.Contains(err.Error(), "revoked") {
		t.Fatalf("a revoked server: err = %v", err)
	}
	if err := a.verify([][]byte{selfCert(t, ca, "node:east/bad")}); !errors.Is(err, ErrRevoked) {
		t.Fatalf("verify of a revoked certificate: %v, want ErrRevoked", err)
	}
}

func selfCert(t *testing.T, ca *pki.CA, cn string) []byte {
	t.Helper()
	certPEM, _, err := ca.IssueClient(cn, []string{"weft:nodes"})
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(certPEM)
	return block.Bytes
}
