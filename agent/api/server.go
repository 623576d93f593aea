package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/weftmesh/weft/internal/version"
)

// maxBody bounds request bodies: a policy file is the largest thing sent.
const maxBody = 4 << 20

// MaxPolicyRevisionWait bounds one GET /v1/policy/revision: a caller
// waiting longer asks again.
const MaxPolicyRevisionWait = 30 * time.Second

// Server serves a Backend on a unix socket.
type Server struct {
	backend Backend
	log     *slog.Logger
	http    *http.Server
	// allowUID is the only non-root uid allowed to talk to the socket: the
	// agent's own (a test's, when not run as root).
	allowUID uint32
}

// NewServer returns a server for b; log receives one line per failed
// request.
func NewServer(b Backend, log *slog.Logger) *Server {
	s := &Server{backend: b, log: log, allowUID: uint32(os.Geteuid())}
	s.http = &http.Server{
		Handler:           s.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		ConnContext:       withPeerCred,
	}
	return s
}

// Listen creates the socket at path: its parent directory (0700) when
// missing, a stale socket left by a dead agent removed, mode 0600. It
// refuses when another agent answers on path, or path is not a socket.
func Listen(path string) (net.Listener, error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating the socket directory %s: %w", dir, err)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("%s exists and is not a socket: remove it or choose another --socket", path)
		}
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("another agent is already serving on %s: stop it, or give this one its own --socket", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("removing the stale socket %s: %w", path, err)
		}
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listening on %s: %w", path, err)
	}
	// The peer-credential check in the server closes the window between
	// bind and chmod; the mode is what other tools see.
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("restricting %s to root: %w", path, err)
	}
	return l, nil
}

// Serve serves requests on l until Shutdown; it returns nil after a
// shutdown or once l is closed, so callers stopping it need not tell
// those apart from failures by the error's text.
func (s *Server) Serve(l net.Listener) error {
	if err := s.http.Serve(l); !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
		return fmt.Errorf("serving the local API: %w", err)
	}
	return nil
}

// Shutdown stops accepting requests and waits for running ones until ctx
// ends.
func (s *Server) Shutdown(ctx context.Context) error { return s.http.Shutdown(ctx) }

type peerCredKey struct{}

// Handler returns the API's routes; tests serve it over any listener.
func (s *Server) Handler() http.Handler { return s.mux() }

func (s *Server) mux() *http.ServeMux {
	mux := http.NewServeMux()
	b := s.backend
	route := func(pattern string, available bool, h func(w http.ResponseWriter, r *http.Request) (any, error)) {
		mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
			if uid, ok := r.Context().Value(peerCredKey{}).(uint32); ok && uid != 0 && uid != s.allowUID {
				s.fail(w, r, Errorf(CodePermission, "the agent's API is root only"))
				return
			}
			if !available {
				s.fail(w, r, Errorf(CodeNotSupported, "%s", pattern))
				return
			}
			v, err := h(w, r)
			if err != nil {
				s.fail(w, r, err)
				return
			}
			status := http.StatusOK
			if r.Method == http.MethodPost {
				status = http.StatusCreated
			}
			if v == nil {
				w.WriteHeader(http.StatusNoContent)
				return
			}
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(status)
			if err := json.NewEncoder(w).Encode(v); err != nil {
				s.log.Debug("writing API response", "path", r.URL.Path, "err", err)
			}
		})
	}

	s.routeCNI(mux, routeFunc(route))
	s.routeClusters(mux, routeFunc(route))
	route("GET /v1/status", b.Status != nil, func(_ http.ResponseWriter, r *http.Request) (any, error) {
		return b.Status.Status(r.Context())
	})
	natRoutes(route, b.NAT)
	route("GET /v1/health", b.Status != nil, func(_ http.ResponseWriter, r *http.Request) (any, error) {
		return b.Status.Health(r.Context())
	})
	route("GET /v1/peers", b.Mesh != nil, func(_ http.ResponseWriter, r *http.Request) (any, error) {
		return nonNil(b.Mesh.Peers(r.Context()))
	})
	route("GET /v1/nodes", b.Mesh != nil, func(_ http.ResponseWriter, r *http.Request) (any, error) {
		return nonNil(b.Mesh.Nodes(r.Context()))
	})
	route("GET /v1/identities", b.Mesh != nil, func(_ http.ResponseWriter, r *http.Request) (any, error) {
		return nonNil(b.Mesh.Identities(r.Context()))
	})

	route("GET /v1/endpoints", b.Endpoints != nil, func(_ http.ResponseWriter, r *http.Request) (any, error) {
		return nonNil(b.Endpoints.Endpoints(r.Context()))
	})
	route("POST /v1/endpoints", b.Endpoints != nil, func(w http.ResponseWriter, r *http.Request) (any, error) {
		var spec EndpointSpec
		if err := decode(w, r, &spec); err != nil {
			return nil, err
		}
		if spec.Netns == "" {
			return nil, Errorf(CodeInvalid, "netns is required")
		}
		return b.Endpoints.AddEndpoint(r.Context(), spec)
	})
	route("DELETE /v1/endpoints/{name}", b.Endpoints != nil, func(_ http.ResponseWriter, r *http.Request) (any, error) {
		return nil, b.Endpoints.RemoveEndpoint(r.Context(), r.PathValue("name"))
	})

	route("GET /v1/policies", b.Policies != nil, func(_ http.ResponseWriter, r *http.Request) (any, error) {
		return nonNil(b.Policies.Policies(r.Context()))
	})
	route("GET /v1/policies/{name}", b.Policies != nil, func(_ http.ResponseWriter, r *http.Request) (any, error) {
		return b.Policies.GetPolicy(r.Context(), r.PathValue("name"))
	})
	route("POST /v1/policies", b.Policies != nil, func(w http.ResponseWriter, r *http.Request) (any, error) {
		var req ApplyPolicyRequest
		if err := decode(w, r, &req); err != nil {
			return nil, err
		}
		if strings.TrimSpace(req.Document) == "" {
			return nil, Errorf(CodeInvalid, "%s: the policy file is empty", req.Filename)
		}
		return b.Policies.ApplyPolicy(r.Context(), req)
	})
	route("DELETE /v1/policies/{name}", b.Policies != nil, func(_ http.ResponseWriter, r *http.Request) (any, error) {
		return nil, b.Policies.DeletePolicy(r.Context(), r.PathValue("name"))
	})
	route("POST /v1/policy/trace", b.Policies != nil, func(w http.ResponseWriter, r *http.Request) (any, error) {
		var req TraceRequest
		if err := decode(w, r, &req); err != nil {
			return nil, err
		}
		return b.Policies.TracePolicy(r.Context(), req)
	})

	route("GET /v1/policy/revision", b.PolicyStatus != nil, func(_ http.ResponseWriter, r *http.Request) (any, error) {
		q := r.URL.Query()
		var atLeast int64
		if v := q.Get("atLeast"); v != "" {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil || n < 0 {
				return nil, Errorf(CodeInvalid, "atLeast=%q: want a revision (a number >= 0)", v)
			}
			atLeast = n
		}
		var wait time.Duration
		if v := q.Get("wait"); v != "" {
			d, err := time.ParseDuration(v)
			if err != nil || d < 0 {
				return nil, Errorf(CodeInvalid, "wait=%q: want a duration such as 5s", v)
			}
			wait = min(d, MaxPolicyRevisionWait)
		}
		return b.PolicyStatus.PolicyRevision(r.Context(), atLeast, wait)
	})

	route("GET /v1/tokens", b.Tokens != nil, func(_ http.ResponseWriter, r *http.Request) (any, error) {
		return nonNil(b.Tokens.Tokens(r.Context()))
	})
	route("POST /v1/tokens", b.Tokens != nil, func(w http.ResponseWriter, r *http.Request) (any, error) {
		var req TokenRequest
		if err := decode(w, r, &req); err != nil {
			return nil, err
		}
		return b.Tokens.CreateToken(r.Context(), req)
	})
	route("DELETE /v1/tokens/{id}", b.Tokens != nil, func(_ http.ResponseWriter, r *http.Request) (any, error) {
		return nil, b.Tokens.RevokeToken(r.Context(), r.PathValue("id"))
	})

	route("POST /v1/nodes/remove", b.Nodes != nil, func(w http.ResponseWriter, r *http.Request) (any, error) {
		var req NodeRemoveRequest
		if err := decode(w, r, &req); err != nil {
			return nil, err
		}
		if req.Node == "" {
			return nil, Errorf(CodeInvalid, "node is required")
		}
		return b.Nodes.RemoveNode(r.Context(), req)
	})
	route("POST /v1/nodes/revoke", b.Nodes != nil, func(w http.ResponseWriter, r *http.Request) (any, error) {
		var req NodeRemoveRequest
		if err := decode(w, r, &req); err != nil {
			return nil, err
		}
		if req.Node == "" {
			return nil, Errorf(CodeInvalid, "node is required")
		}
		return b.Nodes.RevokeNode(r.Context(), req)
	})
	route("GET /v1/revocations", b.Nodes != nil, func(_ http.ResponseWriter, r *http.Request) (any, error) {
		return nonNil(b.Nodes.Revocations(r.Context()))
	})
	// ?cluster=C; without it, the agent's cluster.
	route("DELETE /v1/revocations/{node}", b.Nodes != nil, func(_ http.ResponseWriter, r *http.Request) (any, error) {
		return b.Nodes.ClearRevocation(r.Context(), r.URL.Query().Get("cluster"), r.PathValue("node"))
	})

	route("POST /v1/leave", b.Leaver != nil, func(_ http.ResponseWriter, r *http.Request) (any, error) {
		return nil, b.Leaver.Leave(r.Context())
	})

	route("POST /v1/tunnel/rotate", b.Rotator != nil, func(w http.ResponseWriter, r *http.Request) (any, error) {
		var req RotateKeyRequest
		if err := decode(w, r, &req); err != nil {
			return nil, err
		}
		return b.Rotator.RotateKey(r.Context(), req)
	})

	route("POST /v1/ping", b.Pinger != nil, func(w http.ResponseWriter, r *http.Request) (any, error) {
		var req PingRequest
		if err := decode(w, r, &req); err != nil {
			return nil, err
		}
		if req.Target == "" {
			return nil, Errorf(CodeInvalid, "target is required: a node name, cluster/node or an IP address")
		}
		return b.Pinger.Ping(r.Context(), req)
	})
	// The serving binary's own build: the agent's, on its socket.
	route("POST /v1/admin/credentials", b.AdminCredentials != nil, func(w http.ResponseWriter, r *http.Request) (any, error) {
		var req AdminCredentialRequest
		if err := decode(w, r, &req); err != nil {
			return nil, err
		}
		return b.AdminCredentials.IssueAdminCredential(r.Context(), req)
	})
	route("GET /v1/version", true, func(_ http.ResponseWriter, r *http.Request) (any, error) {
		return version.Get(), nil
	})

	s.observeRoutes(mux, route)

	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		s.fail(w, r, Errorf(CodeNotFound, "no API route %s %s (is meshctl newer than the agent?)", r.Method, r.URL.Path))
	})
	return mux
}

// nonNil makes an empty list encode as [] rather than null, which is what
// a script reading `-o json` expects.
func nonNil[T any](v []T, err error) (any, error) {
	if err != nil {
		return nil, err
	}
	if v == nil {
		v = []T{}
	}
	return v, nil
}

func decode(w http.ResponseWriter, r *http.Request, v any) error {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return Errorf(CodeInvalid, "decoding the request body: %v", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return Errorf(CodeInvalid, "the request body holds more than one JSON value")
	}
	return nil
}

func (s *Server) fail(w http.ResponseWriter, r *http.Request, err error) {
	e := errorOf(err)
	status := e.Code.Status()
	s.log.Info("local API request failed", "method", r.Method, "path", r.URL.Path, "status", status, "code", e.Code, "err", err)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(errorBody{Error: e.Message, Code: e.Code})
}
