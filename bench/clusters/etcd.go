package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/weftmesh/weft/pki"
)

// userHZ is the unit of the CPU times in /proc/<pid>/stat: USER_HZ, which
// Linux fixes at 100 for every architecture's user-space ABI.
const userHZ = 100

// etcdProc is an etcd server running as a process of its own, so that its
// CPU time and its /metrics are its alone, not mixed with the simulated
// agents' (an embedded etcd would share this process).
type etcdProc struct {
	name       string
	clientURL  string
	metricsURL string
	cmd        *exec.Cmd
	exited     chan error
	log        syncBuffer
}

// startEtcd starts bin as a single-member etcd with TLS and client
// certificates (as Weft runs it) on free loopback ports, its data in dir,
// and waits until it answers.
func startEtcd(ctx context.Context, bin, dir, name string, files pki.Files, tc *tls.Config) (*etcdProc, error) {
	var lastErr error
	for attempt := range 3 {
		addrs, err := freeAddrs(3)
		if err != nil {
			return nil, err
		}
		p := &etcdProc{
			name:       name,
			clientURL:  "https://" + addrs[0],
			metricsURL: "http://" + addrs[2],
			exited:     make(chan error, 1),
		}
		peerURL := "http://" + addrs[1]
		p.cmd = exec.Command(bin,
			"--name", name,
			"--data-dir", filepath.Join(dir, fmt.Sprintf("%s-data%d", name, attempt)),
			"--listen-client-urls", p.clientURL,
			"--advertise-client-urls", p.clientURL,
			"--listen-peer-urls", peerURL,
			"--initial-advertise-peer-urls", peerURL,
			"--initial-cluster", name+"="+peerURL,
			"--initial-cluster-token", name,
			// Plain HTTP metrics on a port of their own: scraped without a
			// client certificate, and scraping costs the client port nothing.
			"--listen-metrics-urls", p.metricsURL,
			"--cert-file", files.ServerCertFile,
			"--key-file", files.ServerKey,
			"--trusted-ca-file", files.CAFile,
			"--client-cert-auth",
			"--logger", "zap",
			"--log-outputs", "stderr",
			"--log-level", "warn",
		)
		p.cmd.Stdout, p.cmd.Stderr = &p.log, &p.log
		// Its own process group: a ^C to the benchmark reaches this
		// program, which stops etcd itself after reporting.
		p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := p.cmd.Start(); err != nil {
			return nil, fmt.Errorf("starting %s: %w (install Debian's etcd-server package, or pass -etcd)", bin, err)
		}
		go func() { p.exited <- p.cmd.Wait() }()
		if lastErr = p.waitReady(ctx, tc); lastErr == nil {
			return p, nil
		}
		p.stop()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		// Most likely a port taken between our probe and etcd's bind.
		lastErr = fmt.Errorf("etcd %s did not start: %w; its log:\n%s", name, lastErr, p.log.String())
	}
	return nil, lastErr
}

func (p *etcdProc) waitReady(ctx context.Context, tc *tls.Config) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case err := <-p.exited:
			p.exited <- err // stop waits for it too
			return fmt.Errorf("etcd exited: %v", err)
		default:
		}
		ec, err := dial(ctx, p.clientURL, tc)
		if err == nil {
			rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			_, err = ec.Get(rctx, "health", clientv3.WithCountOnly())
			cancel()
			_ = ec.Close()
			if err == nil {
				return nil
			}
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// stop ends the process (by its PID) and waits for it.
func (p *etcdProc) stop() {
	if p == nil || p.cmd.Process == nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.exited
	}
}

// cpuSeconds is the process's user plus system CPU time so far, all its
// threads included.
func (p *etcdProc) cpuSeconds() (float64, error) {
	return procCPU(strconv.Itoa(p.cmd.Process.Pid))
}

// rssMiB is the process's resident memory.
func (p *etcdProc) rssMiB() (float64, error) {
	return procRSS(strconv.Itoa(p.cmd.Process.Pid))
}

// procCPU reads utime+stime of /proc/<pid>/stat ("self" for this process).
func procCPU(pid string) (float64, error) {
	data, err := os.ReadFile("/proc/" + pid + "/stat")
	if err != nil {
		return 0, fmt.Errorf("reading CPU time: %w", err)
	}
	return parseStatCPU(data)
}

// parseStatCPU takes utime and stime (fields 14 and 15) from a
// /proc/<pid>/stat line. The command name (field 2) may hold spaces and
// parentheses, so fields are counted from the last ')'.
func parseStatCPU(data []byte) (float64, error) {
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return 0, fmt.Errorf("malformed /proc stat line %q", data)
	}
	f := strings.Fields(string(data[i+1:]))
	// f[0] is field 3 (state): utime is field 14, f[11].
	if len(f) < 13 {
		return 0, fmt.Errorf("malformed /proc stat line: %d fields after the name", len(f))
	}
	ut, err1 := strconv.ParseUint(f[11], 10, 64)
	st, err2 := strconv.ParseUint(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("malformed /proc stat CPU times: %w", err)
	}
	return float64(ut+st) / userHZ, nil
}

func procRSS(pid string) (float64, error) {
	data, err := os.ReadFile("/proc/" + pid + "/status")
	if err != nil {
		return 0, fmt.Errorf("reading memory: %w", err)
	}
	for line := range strings.Lines(string(data)) {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(rest)
			if len(f) == 2 && f[1] == "kB" {
				kb, err := strconv.ParseFloat(f[0], 64)
				if err == nil {
					return kb / 1024, nil
				}
			}
		}
	}
	return 0, fmt.Errorf("no VmRSS in /proc/%s/status", pid)
}

// metrics scrapes the server's /metrics and returns the named samples
// (unlabelled ones; a missing name is an error: the figure would be wrong,
// not zero).
func (p *etcdProc) metrics(ctx context.Context, names ...string) (map[string]float64, error) {
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(rctx, http.MethodGet, p.metricsURL+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("scraping etcd %s: %w", p.name, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("scraping etcd %s: %s", p.name, resp.Status)
	}
	return parseMetrics(bufio.NewScanner(resp.Body), names)
}

// watches returns the server's watchers and watch streams.
func (p *etcdProc) watches(ctx context.Context) (watchers, streams int, err error) {
	const w, s = "etcd_debugging_mvcc_watcher_total", "etcd_debugging_mvcc_watch_stream_total"
	m, err := p.metrics(ctx, w, s)
	if err != nil {
		return 0, 0, err
	}
	return int(m[w]), int(m[s]), nil
}

// parseMetrics reads the Prometheus text format for the unlabelled
// samples of names.
func parseMetrics(sc *bufio.Scanner, names []string) (map[string]float64, error) {
	want := map[string]bool{}
	for _, n := range names {
		want[n] = true
	}
	out := map[string]float64{}
	for sc.Scan() {
		name, value, ok := strings.Cut(sc.Text(), " ")
		if !ok || !want[name] {
			continue
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(value), 64)
		if err != nil {
			return nil, fmt.Errorf("metric %s: %w", name, err)
		}
		out[name] = v
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading metrics: %w", err)
	}
	for _, n := range names {
		if _, ok := out[n]; !ok {
			return nil, fmt.Errorf("etcd exports no metric %s (is it etcd 3.4 or newer?)", n)
		}
	}
	return out, nil
}

func freeAddrs(n int) ([]string, error) {
	var out []string
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			_ = l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("finding a free port: %w", err)
		}
		ls = append(ls, l)
		out = append(out, l.Addr().String())
	}
	return out, nil
}

// clientTLS is the client side of the bundle: the CA and the
// administrative client certificate, shared by every simulated client.
func clientTLS(files pki.Files) (*tls.Config, error) {
	caPEM, err := os.ReadFile(files.CAFile)
	if err != nil {
		return nil, fmt.Errorf("reading the CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("%s holds no PEM certificate", files.CAFile)
	}
	cert, err := tls.LoadX509KeyPair(files.ClientCertFile, files.ClientKey)
	if err != nil {
		return nil, fmt.Errorf("loading the client certificate: %w", err)
	}
	return &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}, nil
}

// dial makes one etcd client: one connection, as each agent process or
// mirror has its own. The options are kvstore.New's.
func dial(ctx context.Context, url string, tc *tls.Config) (*clientv3.Client, error) {
	ec, err := clientv3.New(clientv3.Config{
		Endpoints:            []string{url},
		DialTimeout:          5 * time.Second,
		TLS:                  tc.Clone(),
		Context:              ctx,
		Logger:               zap.NewNop(),
		DialKeepAliveTime:    10 * time.Second,
		DialKeepAliveTimeout: 5 * time.Second,
		PermitWithoutStream:  true,
	})
	if err != nil {
		return nil, fmt.Errorf("etcd client of %s: %w", url, err)
	}
	return ec, nil
}

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	// etcd at warn level says little; keep the tail for a failure report.
	if s.buf.Len() > 1<<20 {
		s.buf.Reset()
	}
	return s.buf.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.String()
}
