package api

import (
	"errors"
	"net/url"
	"reflect"
	"testing"
	"time"
)

func TestFlowQueryRoundTrip(t *testing.T) {
	req := FlowRequest{
		Filter: FlowFilter{FromLabels: []string{"app=web", "k8s:tier=front"}, ToLabels: []string{"app=db"}, FromIP: "100.64.1.2", ToIP: "fd00::1",
			Port: 5432, Protocol: "tcp", Verdict: "dropped", Cluster: "west.eu"},
		Last: 7, Since: time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC), Follow: true,
	}
	got, err := ParseFlowQuery(req.Query())
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, req) {
		t.Fatalf("round trip:\n got %+v\nwant %+v", got, req)
	}
	empty, err := ParseFlowQuery(url.Values{})
	if err != nil || empty.Last != -1 || empty.Follow {
		t.Fatalf("no parameters: %+v %v, want every stored flow, no follow", empty, err)
	}
}

func TestFlowQueryRefusesBadInput(t *testing.T) {
	for _, q := range []string{
		"port=0", "port=70000", "port=x", "last=-2", "last=x", "since=yesterday", "follow=maybe",
		"verdict=denied", "protocol=http", "from-label=app", "to-label=:x=y", "from-ip=1.2.3", "colour=red", "port=1&port=2",
		"cluster=West", "cluster=a/b", "cluster=a&cluster=b",
	} {
		v, _ := url.ParseQuery(q)
		if _, err := ParseFlowQuery(v); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: err = %v, want ErrInvalid", q, err)
		}
	}
}

// FuzzParseFlowQuery: any query either parses into a request that
// survives a round trip, or is refused as invalid; it never panics.
func FuzzParseFlowQuery(f *testing.F) {
	for _, s := range []string{"", "last=5&follow=1", "from-label=app=web&verdict=dropped", "port=80&protocol=udp&to-ip=10.0.0.1", "since=2026-01-02T03:04:05Z"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		v, err := url.ParseQuery(raw)
		if err != nil {
			return
		}
		req, err := ParseFlowQuery(v)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("%q: error %v does not wrap ErrInvalid", raw, err)
			}
			return
		}
		again, err := ParseFlowQuery(req.Query())
		if err != nil {
			t.Fatalf("%q parsed, but its re-encoding %q does not: %v", raw, req.Query().Encode(), err)
		}
		if again.Last != req.Last || again.Follow != req.Follow || !again.Since.Equal(req.Since) || again.Filter.Port != req.Filter.Port {
			t.Fatalf("%q: round trip changed the request: %+v -> %+v", raw, req, again)
		}
	})
}
