// Package probe runs the node's side of `meshctl connectivity test`: probe
// workloads (a network namespace made a mesh endpoint, with a TCP and UDP
// echo server inside), client connections from such a workload or from the
// host, and a watch of the underlay for a payload sent in the clear.
//
// Probe workloads are ordinary endpoints (the agent's endpoint manager
// makes them), so policy applies to them as to any other; their names must
// start with NamePrefix, and only workloads this package created can be
// removed through it, so the API cannot touch anything else on the node.
package probe

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/weftmesh/weft/agent/api"
)

// NamePrefix starts the name of every probe workload.
const NamePrefix = "probe-"

// DefaultPort is the echo servers' port.
const DefaultPort = 7946

// maxPayload bounds what a probe sends.
const maxPayload = 1024

// Endpoints is the agent's endpoint manager.
type Endpoints interface {
	AddEndpoint(ctx context.Context, spec api.EndpointSpec) (api.Endpoint, error)
	RemoveEndpoint(ctx context.Context, name string) error
}

// Prober implements the probe routes of the agent API.
type Prober struct {
	eps Endpoints
	log *slog.Logger

	mu        sync.Mutex
	workloads map[string]*workload
}

type workload struct {
	closers []io.Closer
}

// New returns a prober adding workloads through eps.
func New(eps Endpoints, log *slog.Logger) *Prober {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Prober{eps: eps, log: log, workloads: map[string]*workload{}}
}

func netnsPath(name string) string { return filepath.Join("/var/run/netns", name) }

// ValidateName checks a probe workload name.
func ValidateName(name string) error {
	if !strings.HasPrefix(name, NamePrefix) || len(name) > 40 || len(name) <= len(NamePrefix) {
		return fmt.Errorf("probe workload name %q must start with %q and have at most 40 characters", name, NamePrefix)
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-') {
			return fmt.Errorf("probe workload name %q: use lowercase letters, digits and '-'", name)
		}
	}
	return nil
}

// Add creates the namespace, makes it an endpoint and starts the echo
// servers in it.
func (p *Prober) Add(ctx context.Context, req api.ProbeWorkloadRequest) (api.Endpoint, error) {
	if err := ValidateName(req.Name); err != nil {
		return api.Endpoint{}, api.Errorf(api.CodeInvalid, "%v", err)
	}
	if len(req.Ports) == 0 {
		req.Ports = []uint16{DefaultPort}
	}
	if len(req.Ports) > 8 {
		return api.Endpoint{}, api.Errorf(api.CodeInvalid, "at most 8 echo ports")
	}
	p.mu.Lock()
	_, exists := p.workloads[req.Name]
	p.mu.Unlock()
	if exists {
		return api.Endpoint{}, api.Errorf(api.CodeConflict, "probe workload %s exists", req.Name)
	}
	if _, err := os.Stat(netnsPath(req.Name)); err == nil {
		return api.Endpoint{}, api.Errorf(api.CodeConflict, "a network namespace named %s exists already and is not this agent's probe", req.Name)
	}
	if err := newNamedNetns(req.Name); err != nil {
		return api.Endpoint{}, fmt.Errorf("creating namespace %s: %w", req.Name, err)
	}
	w := &workload{}
	fail := func(err error) (api.Endpoint, error) {
		for _, c := range w.closers {
			c.Close()
		}
		_ = p.eps.RemoveEndpoint(context.WithoutCancel(ctx), req.Name)
		_ = netns.DeleteNamed(req.Name)
		return api.Endpoint{}, err
	}
	ep, err := p.eps.AddEndpoint(ctx, api.EndpointSpec{Netns: req.Name, Labels: req.Labels})
	if err != nil {
		return fail(err)
	}
	var (
		tls []net.Listener
		uls []net.PacketConn
	)
	if err := inNetns(req.Name, func() error {
		for _, port := range req.Ports {
			addr := net.JoinHostPort("0.0.0.0", strconv.Itoa(int(port)))
			tl, err := net.Listen("tcp4", addr)
			if err != nil {
				return err
			}
			w.closers = append(w.closers, tl)
			tls = append(tls, tl)
			ul, err := net.ListenPacket("udp4", addr)
			if err != nil {
				return err
			}
			w.closers = append(w.closers, ul)
			uls = append(uls, ul)
		}
		return nil
	}); err != nil {
		return fail(fmt.Errorf("starting the echo servers in %s: %w", req.Name, err))
	}
	for _, l := range tls {
		go serveTCP(l)
	}
	for _, pc := range uls {
		go serveUDP(pc)
	}
	p.mu.Lock()
	p.workloads[req.Name] = w
	p.mu.Unlock()
	p.log.Info("probe workload ready", "name", req.Name, "ip", ep.IP, "ports", req.Ports)
	return ep, nil
}

// Remove stops a probe workload and deletes its namespace.
func (p *Prober) Remove(ctx context.Context, name string) error {
	p.mu.Lock()
	w, ok := p.workloads[name]
	delete(p.workloads, name)
	p.mu.Unlock()
	if !ok {
		return api.Errorf(api.CodeNotFound, "no probe workload %q on this node", name)
	}
	for _, c := range w.closers {
		c.Close()
	}
	err := p.eps.RemoveEndpoint(ctx, name)
	if errors.Is(err, api.ErrNotFound) {
		err = nil
	}
	return errors.Join(err, netns.DeleteNamed(name))
}

// RemoveAll removes every probe workload (agent shutdown).
func (p *Prober) RemoveAll(ctx context.Context) {
	p.mu.Lock()
	var names []string
	for n := range p.workloads {
		names = append(names, n)
	}
	p.mu.Unlock()
	for _, n := range names {
		if err := p.Remove(ctx, n); err != nil {
			p.log.Warn("removing probe workload", "name", n, "err", err)
		}
	}
}

// Run makes one client connection: TCP connects, sends the payload and
// reads it back; UDP sends it and waits for the echo.
func (p *Prober) Run(ctx context.Context, req api.ProbeRequest) (api.ProbeResult, error) {
	if _, _, err := net.SplitHostPort(req.To); err != nil {
		return api.ProbeResult{}, api.Errorf(api.CodeInvalid, "to %q is not ip:port", req.To)
	}
	proto := strings.ToLower(req.Protocol)
	if proto != "tcp" && proto != "udp" {
		return api.ProbeResult{}, api.Errorf(api.CodeInvalid, "protocol %q: probes use tcp or udp", req.Protocol)
	}
	if len(req.Payload) > maxPayload {
		return api.ProbeResult{}, api.Errorf(api.CodeInvalid, "payload longer than %d bytes", maxPayload)
	}
	if req.From != "" {
		p.mu.Lock()
		_, ok := p.workloads[req.From]
		p.mu.Unlock()
		if !ok {
			return api.ProbeResult{}, api.Errorf(api.CodeNotFound, "no probe workload %q on this node", req.From)
		}
	}
	timeout := time.Duration(req.Timeout)
	if timeout <= 0 || timeout > 30*time.Second {
		timeout = 2 * time.Second
	}
	payload := []byte(req.Payload)
	if len(payload) == 0 {
		payload = []byte("weft-probe")
	}
	var conn net.Conn
	start := time.Now()
	dial := func() error {
		var err error
		d := net.Dialer{Timeout: timeout}
		conn, err = d.DialContext(ctx, proto+"4", req.To)
		return err
	}
	var err error
	if req.From != "" {
		err = inNetns(req.From, dial)
	} else {
		err = dial()
	}
	if err != nil {
		return api.ProbeResult{Error: fmt.Sprintf("connecting: %v", err)}, nil
	}
	defer conn.Close()
	_ = conn.SetDeadline(start.Add(timeout))
	if _, err := conn.Write(payload); err != nil {
		return api.ProbeResult{Error: fmt.Sprintf("sending: %v", err)}, nil
	}
	buf := make([]byte, len(payload))
	if _, err := io.ReadFull(conn, buf); err != nil {
		return api.ProbeResult{Error: fmt.Sprintf("no echo: %v", err)}, nil
	}
	if !bytes.Equal(buf, payload) {
		return api.ProbeResult{Error: "the echo differs from what was sent"}, nil
	}
	return api.ProbeResult{OK: true, RTT: api.Duration(time.Since(start))}, nil
}

func serveTCP(l net.Listener) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(30 * time.Second))
			_, _ = io.Copy(c, io.LimitReader(c, 1<<20))
		}()
	}
}

func serveUDP(pc net.PacketConn) {
	buf := make([]byte, 2048)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			return
		}
		_, _ = pc.WriteTo(buf[:n], from)
	}
}

// inNetns runs f on a thread inside the named namespace. Sockets made
// there stay in it.
func inNetns(name string, f func() error) error {
	ns, err := netns.GetFromPath(netnsPath(name))
	if err != nil {
		return fmt.Errorf("opening namespace %s: %w", name, err)
	}
	defer ns.Close()
	return onThreadIn(ns, f)
}

// onThreadIn locks a thread, enters ns, runs f and comes back. If coming
// back fails the thread stays locked, so Go retires it rather than reuse
// it in the wrong namespace.
func onThreadIn(ns netns.NsHandle, f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		if err := netns.Set(ns); err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		ferr := f()
		if err := netns.Set(orig); err != nil {
			errc <- errors.Join(ferr, fmt.Errorf("returning to the agent's namespace: %w", err))
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// newNamedNetns creates a named namespace (as `ip netns add` does) with
// its loopback up, without moving the agent's threads into it.
func newNamedNetns(name string) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		ns, err := netns.NewNamed(name)
		if err != nil {
			_ = netns.Set(orig)
			errc <- err
			return
		}
		defer ns.Close()
		var lerr error
		if lo, err := netlink.LinkByName("lo"); err == nil {
			lerr = netlink.LinkSetUp(lo)
		}
		if err := netns.Set(orig); err != nil {
			errc <- fmt.Errorf("returning to the agent's namespace: %w", err)
			return
		}
		runtime.UnlockOSThread()
		errc <- lerr
	}()
	return <-errc
}
