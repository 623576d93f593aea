package api

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"testing"

	"github.com/weftmesh/weft/agent/meshtls"
	"github.com/weftmesh/weft/pki"
)

type fakeNAT struct{ caller MeshCaller }

func (f *fakeNAT) Reflexive(_ context.Context, c MeshCaller) (ReflexiveAnswer, error) {
	f.caller = c
	return ReflexiveAnswer{Endpoint: "198.19.0.5:40001", Node: "lab/relay"}, nil
}

func (f *fakeNAT) RelayTicket(_ context.Context, c MeshCaller) (RelayTicket, error) {
	f.caller = c
	return RelayTicket{Ticket: make([]byte, 16), Relay: "198.18.3.10:51838", ExpiresInSeconds: 30}, nil
}

func nodeTLS(t *testing.T, ca *pki.CA, cn string) *meshtls.Credentials {
	t.Helper()
	certPEM, keyPEM, err := ca.IssueClient(cn, []string{"weft:nodes"})
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return meshtls.New(cert, ca.Pool())
}

// TestNATRoutesKnowTheCallingNode: over mTLS the handlers get the node
// of the client certificate and its address; on the plain (local) API
// they refuse.
func TestNATRoutesKnowTheCallingNode(t *testing.T) {
	ca, err := pki.NewCA("lab")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeNAT{}
	srv := NewServer(Backend{NAT: f}, slog.New(slog.DiscardHandler))
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.http.Serve(tls.NewListener(l, nodeTLS(t, ca, "node:lab/relay").ServerConfig())) }()
	t.Cleanup(func() { srv.http.Close() })
	cl := &http.Client{Transport: nodeTLS(t, ca, "node:lab/s1").Transport()}
	resp, err := cl.Post("https://"+l.Addr().String()+"/v1/nat/relay-ticket", "application/json", nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var tk RelayTicket
	if resp.StatusCode/100 != 2 || json.Unmarshal(body, &tk) != nil || len(tk.Ticket) != 16 {
		t.Fatalf("ticket: %s %s", resp.Status, body)
	}
	if f.caller.Cluster != "lab" || f.caller.Node != "s1" || f.caller.Addr.String() != "127.0.0.1" {
		t.Fatalf("caller %+v", f.caller)
	}
	// Without TLS (the local socket): refused.
	plain, _ := serve(t, Backend{NAT: f})
	var v ReflexiveAnswer
	if err := plain.do(context.Background(), http.MethodGet, "/v1/nat/reflexive", nil, &v); err == nil {
		t.Fatal("the local API answered a NAT question")
	}
}
