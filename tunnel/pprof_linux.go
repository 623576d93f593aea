package tunnel

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"runtime/pprof"
	"strconv"
	"strings"
	"time"
)

// envHelperPprof names a unix socket on which the helper serves Go
// profiles (see servePprof); unset, it serves none. The helper inherits the
// agent's environment, so setting it for the agent profiles the datapath.
const envHelperPprof = "WEFT_TUNNEL_PPROF"

// maxProfileSeconds bounds a CPU profile request.
const maxProfileSeconds = 300

// servePprof serves, on the unix socket path (mode 0600, removed on
// return), until ctx ends:
//
//	/debug/pprof/profile?seconds=N  CPU profile (default 10 s)
//	/debug/pprof/NAME               heap, allocs, goroutine, mutex, block, threadcreate
//
// It uses runtime/pprof rather than net/http/pprof, whose import registers
// handlers on http.DefaultServeMux for the whole process. Fetch with e.g.
// `curl --unix-socket SOCK http://helper/debug/pprof/profile?seconds=10 >cpu.pprof`.
func servePprof(ctx context.Context, path string, log *slog.Logger) error {
	if !strings.HasPrefix(path, "/") {
		return fmt.Errorf("%w: %s=%q must be an absolute socket path", ErrBadConfig, envHelperPprof, path)
	}
	_ = os.Remove(path) // a stale socket from an earlier helper
	ln, err := net.Listen("unix", path)
	if err != nil {
		return fmt.Errorf("listening for profiles on %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return fmt.Errorf("restricting profile socket %s: %w", path, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/profile", func(w http.ResponseWriter, r *http.Request) {
		secs := 10
		if v := r.URL.Query().Get("seconds"); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 || n > maxProfileSeconds {
				http.Error(w, fmt.Sprintf("seconds=%q: want a whole number from 1 to %d", v, maxProfileSeconds), http.StatusBadRequest)
				return
			}
			secs = n
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		if err := pprof.StartCPUProfile(w); err != nil {
			http.Error(w, "CPU profile already running: "+err.Error(), http.StatusConflict)
			return
		}
		select {
		case <-time.After(time.Duration(secs) * time.Second):
		case <-r.Context().Done():
		}
		pprof.StopCPUProfile()
	})
	mux.HandleFunc("/debug/pprof/{name}", func(w http.ResponseWriter, r *http.Request) {
		p := pprof.Lookup(r.PathValue("name"))
		if p == nil {
			http.Error(w, "no profile "+r.PathValue("name")+"; try profile, heap, allocs, goroutine, mutex, block, threadcreate", http.StatusNotFound)
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		_ = p.WriteTo(w, 0)
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	log.Info("serving Go profiles", "socket", path)
	err = srv.Serve(ln)
	_ = os.Remove(path)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return fmt.Errorf("serving profiles on %s: %w", path, err)
}
