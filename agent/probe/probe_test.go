package probe

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/weftmesh/weft/agent/api"
)

func TestValidateName(t *testing.T) {
	for _, ok := range []string{"probe-a1b2c3-e0", "probe-x"} {
		if err := ValidateName(ok); err != nil {
			t.Errorf("%s: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "probe-", "web", "probe-UPPER", "probe-a/b", "probe-" + string(make([]byte, 40))} {
		if err := ValidateName(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

type noEndpoints struct{}

func (noEndpoints) AddEndpoint(context.Context, api.EndpointSpec) (api.Endpoint, error) {
	return api.Endpoint{}, errors.New("not called")
}
func (noEndpoints) RemoveEndpoint(context.Context, string) error { return nil }

// Bad requests are refused before anything is created.
func TestRequestsAreChecked(t *testing.T) {
	p := New(noEndpoints{}, nil)
	ctx := context.Background()
	if _, err := p.Add(ctx, api.ProbeWorkloadRequest{Name: "web"}); !errors.Is(err, api.ErrInvalid) {
		t.Errorf("add web: %v", err)
	}
	if _, err := p.Add(ctx, api.ProbeWorkloadRequest{Name: "probe-x", Ports: make([]uint16, 9)}); !errors.Is(err, api.ErrInvalid) {
		t.Errorf("nine ports: %v", err)
	}
	for _, req := range []api.ProbeRequest{
		{To: "100.64.1.2", Protocol: "tcp"},
		{To: "100.64.1.2:80", Protocol: "icmp"},
		{To: "100.64.1.2:80", Protocol: "tcp", Payload: string(make([]byte, 2000))},
	} {
		if _, err := p.Run(ctx, req); !errors.Is(err, api.ErrInvalid) {
			t.Errorf("%+v: %v, want ErrInvalid", req.To, err)
		}
	}
	if _, err := p.Run(ctx, api.ProbeRequest{From: "probe-nope", To: "127.0.0.1:1", Protocol: "tcp"}); !errors.Is(err, api.ErrNotFound) {
		t.Errorf("from an unknown workload: %v", err)
	}
	if err := p.Remove(ctx, "probe-nope"); !errors.Is(err, api.ErrNotFound) {
		t.Errorf("removing an unknown workload: %v", err)
	}
	w := &WireWatch{Ifaces: func() ([]int, error) { return nil, nil }, TunnelPort: 51833}
	if _, err := w.Check(ctx, api.WireCheckRequest{Marker: "short", Duration: api.Duration(time.Second)}); !errors.Is(err, api.ErrInvalid) {
		t.Errorf("short marker: %v", err)
	}
	if _, err := w.Check(ctx, api.WireCheckRequest{Marker: "long-enough-marker", Duration: api.Duration(time.Minute)}); !errors.Is(err, api.ErrInvalid) {
		t.Errorf("a minute of capture: %v", err)
	}
}

// From the host, a probe reaches a local echo and reports a refused one.
func TestRunFromTheHost(t *testing.T) {
	p := New(noEndpoints{}, nil)
	// An echo on loopback, as a probe workload would serve it.
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go serveTCP(l)
	res, err := p.Run(context.Background(), api.ProbeRequest{To: l.Addr().String(), Protocol: "tcp", Payload: "hello"})
	if err != nil || !res.OK || res.RTT <= 0 {
		t.Fatalf("probe to a live echo: %+v %v", res, err)
	}
	l.Close()
	res, err = p.Run(context.Background(), api.ProbeRequest{To: l.Addr().String(), Protocol: "tcp", Timeout: api.Duration(time.Second)})
	if err != nil || res.OK || res.Error == "" {
		t.Fatalf("probe to a closed port: %+v %v", res, err)
	}
}
