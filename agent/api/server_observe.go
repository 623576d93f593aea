package api

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/weftmesh/weft/internal/names"
)

// Relayer reaches other nodes' agents.
type Relayer interface {
	// Relay returns a handler that forwards a request to the agent of
	// cluster/node, whose path has already been rewritten to /v1/...;
	// ErrNotFound when the node is unknown.
	Relay(ctx context.Context, cluster, node string) (http.Handler, error)
}

type routeFunc func(pattern string, available bool, h func(w http.ResponseWriter, r *http.Request) (any, error))

func (s *Server) allowed(w http.ResponseWriter, r *http.Request) bool {
	if uid, ok := r.Context().Value(peerCredKey{}).(uint32); ok && uid != 0 && uid != s.allowUID {
		s.fail(w, r, Errorf(CodePermission, "the agent's API is root only"))
		return false
	}
	return true
}

func (s *Server) observeRoutes(mux *http.ServeMux, route routeFunc) {
	b := s.backend
	mux.HandleFunc("GET /v1/flows", func(w http.ResponseWriter, r *http.Request) {
		if !s.allowed(w, r) {
			return
		}
		if b.Flows == nil {
			s.fail(w, r, Errorf(CodeNotSupported, "GET /v1/flows"))
			return
		}
		req, err := ParseFlowQuery(r.URL.Query())
		if err != nil {
			s.fail(w, r, err)
			return
		}
		s.streamFlows(w, r, req)
	})
	route("GET /v1/health/node", b.Health != nil, func(_ http.ResponseWriter, r *http.Request) (any, error) {
		return b.Health.NodeHealth(r.Context())
	})
	route("GET /v1/health/mesh", b.Health != nil, func(_ http.ResponseWriter, r *http.Request) (any, error) {
		return b.Health.HealthMatrix(r.Context())
	})
	route("POST /v1/probe/workloads", b.Prober != nil, func(w http.ResponseWriter, r *http.Request) (any, error) {
		var req ProbeWorkloadRequest
		if err := decode(w, r, &req); err != nil {
			return nil, err
		}
		return b.Prober.AddProbeWorkload(r.Context(), req)
	})
	route("DELETE /v1/probe/workloads/{name}", b.Prober != nil, func(_ http.ResponseWriter, r *http.Request) (any, error) {
		return nil, b.Prober.RemoveProbeWorkload(r.Context(), r.PathValue("name"))
	})
	route("POST /v1/probe/run", b.Prober != nil, func(w http.ResponseWriter, r *http.Request) (any, error) {
		var req ProbeRequest
		if err := decode(w, r, &req); err != nil {
			return nil, err
		}
		return b.Prober.RunProbe(r.Context(), req)
	})
	route("POST /v1/probe/wire", b.Prober != nil, func(w http.ResponseWriter, r *http.Request) (any, error) {
		var req WireCheckRequest
		if err := decode(w, r, &req); err != nil {
			return nil, err
		}
		return b.Prober.WireCheck(r.Context(), req)
	})
	route("GET /v1/logs/errors", b.Prober != nil, func(_ http.ResponseWriter, r *http.Request) (any, error) {
		var since time.Time
		if v := r.URL.Query().Get("since"); v != "" {
			t, err := time.Parse(time.RFC3339Nano, v)
			if err != nil {
				return nil, Errorf(CodeInvalid, "since=%q is not an RFC 3339 time", v)
			}
			since = t
		}
		return b.Prober.LogErrors(r.Context(), since)
	})
	mux.HandleFunc("/v1/relay/{cluster}/{node}/{rest...}", func(w http.ResponseWriter, r *http.Request) {
		if !s.allowed(w, r) {
			return
		}
		if b.Relay == nil {
			s.fail(w, r, Errorf(CodeNotSupported, "this listener does not relay to other nodes"))
			return
		}
		h, err := b.Relay.Relay(r.Context(), r.PathValue("cluster"), r.PathValue("node"))
		if err != nil {
			s.fail(w, r, err)
			return
		}
		r2 := r.Clone(r.Context())
		r2.URL.Path = "/v1/" + r.PathValue("rest")
		r2.URL.RawPath = ""
		r2.RequestURI = ""
		h.ServeHTTP(w, r2)
	})
}

// streamFlows writes the flow stream as NDJSON, flushing every line.
func (s *Server) streamFlows(w http.ResponseWriter, r *http.Request, req FlowRequest) {
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	flusher, _ := w.(http.Flusher)
	enc := json.NewEncoder(w)
	emit := func(l FlowLine) error {
		if err := enc.Encode(l); err != nil {
			return err
		}
		if flusher != nil {
			flusher.Flush()
		}
		return nil
	}
	if err := s.backend.Flows.Flows(r.Context(), req, emit); err != nil && r.Context().Err() == nil {
		s.log.Info("flow stream ended", "err", err)
		e := errorOf(err)
		_ = emit(FlowLine{Error: e.Message, Code: e.Code})
	}
}

// Query encodes a flow request as the query parameters of GET /v1/flows.
func (req FlowRequest) Query() url.Values {
	q := url.Values{}
	f := req.Filter
	for _, l := range f.FromLabels {
		q.Add("from-label", l)
	}
	for _, l := range f.ToLabels {
		q.Add("to-label", l)
	}
	set := func(k, v string) {
		if v != "" {
			q.Set(k, v)
		}
	}
	set("from-ip", f.FromIP)
	set("to-ip", f.ToIP)
	if f.Port != 0 {
		q.Set("port", strconv.Itoa(int(f.Port)))
	}
	set("protocol", f.Protocol)
	set("verdict", f.Verdict)
	set("cluster", f.Cluster)
	q.Set("last", strconv.Itoa(req.Last))
	if !req.Since.IsZero() {
		q.Set("since", req.Since.UTC().Format(time.RFC3339Nano))
	}
	if req.Follow {
		q.Set("follow", "1")
	}
	return q
}

// ParseFlowQuery decodes and validates the query of GET /v1/flows.
func ParseFlowQuery(q url.Values) (FlowRequest, error) {
	var req FlowRequest
	bad := func(format string, args ...any) (FlowRequest, error) {
		return FlowRequest{}, Errorf(CodeInvalid, format, args...)
	}
	known := map[string]bool{"from-label": true, "to-label": true, "from-ip": true, "to-ip": true, "port": true,
		"protocol": true, "verdict": true, "cluster": true, "last": true, "since": true, "follow": true}
	for k, vs := range q {
		if !known[k] {
			return bad("unknown flow query parameter %q", k)
		}
		if len(vs) > 1 && k != "from-label" && k != "to-label" {
			return bad("flow query parameter %q given %d times", k, len(vs))
		}
	}
	req.Filter = FlowFilter{
		FromLabels: q["from-label"], ToLabels: q["to-label"],
		FromIP: q.Get("from-ip"), ToIP: q.Get("to-ip"),
		Protocol: q.Get("protocol"), Verdict: q.Get("verdict"),
		Cluster: q.Get("cluster"),
	}
	if v := q.Get("port"); v != "" {
		n, err := strconv.ParseUint(v, 10, 16)
		if err != nil || n == 0 {
			return bad("port=%q is not a port (1-65535)", v)
		}
		req.Filter.Port = uint16(n)
	}
	req.Last = -1
	if v := q.Get("last"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < -1 {
			return bad("last=%q is not a count (0 or more; -1 for all)", v)
		}
		req.Last = n
	}
	if v := q.Get("since"); v != "" {
		t, err := time.Parse(time.RFC3339Nano, v)
		if err != nil {
			return bad("since=%q is not an RFC 3339 time", v)
		}
		req.Since = t
	}
	switch v := q.Get("follow"); v {
	case "", "0", "false":
	case "1", "true":
		req.Follow = true
	default:
		return bad("follow=%q: use 1 or 0", v)
	}
	if err := req.Filter.Validate(); err != nil {
		return FlowRequest{}, Errorf(CodeInvalid, "%v", err)
	}
	return req, nil
}

// Validate reports the first thing wrong with a filter, naming the
// meshctl flag that set it.
func (f FlowFilter) Validate() error {
	for _, l := range f.FromLabels {
		if err := validateLabelMatch(l); err != nil {
			return fmt.Errorf("--from-label %q: %v", l, err)
		}
	}
	for _, l := range f.ToLabels {
		if err := validateLabelMatch(l); err != nil {
			return fmt.Errorf("--to-label %q: %v", l, err)
		}
	}
	for flag, v := range map[string]string{"--from-ip": f.FromIP, "--to-ip": f.ToIP} {
		if v == "" {
			continue
		}
		if _, err := netip.ParseAddr(v); err != nil {
			return fmt.Errorf("%s %q is not an IP address", flag, v)
		}
	}
	switch strings.ToLower(f.Protocol) {
	case "", "tcp", "udp", "icmp", "icmpv6", "sctp":
	default:
		return fmt.Errorf("--protocol %q: use tcp, udp, icmp, icmpv6 or sctp", f.Protocol)
	}
	switch f.Verdict {
	case "", "forwarded", "dropped":
	default:
		return fmt.Errorf("--verdict %q: use forwarded or dropped", f.Verdict)
	}
	if f.Cluster != "" {
		if err := names.Validate("cluster", f.Cluster); err != nil {
			return fmt.Errorf("--cluster: %v (see `meshctl cluster list`)", err)
		}
	}
	return nil
}

// validateLabelMatch checks key=value or source:key=value.
func validateLabelMatch(s string) error {
	kv, val, ok := strings.Cut(s, "=")
	if !ok {
		return fmt.Errorf("missing '=': write key=value or source:key=value (app=web, k8s:app=web)")
	}
	key := kv
	if src, k, ok := strings.Cut(kv, ":"); ok {
		if src == "" {
			return fmt.Errorf("empty source before ':'")
		}
		key = k
	}
	if key == "" {
		return fmt.Errorf("empty key")
	}
	if strings.ContainsAny(key+val, " \t\n,") {
		return fmt.Errorf("keys and values cannot contain spaces or commas")
	}
	return nil
}
