// Package plugin is weft-cni, the CNI plugin of Weft on Kubernetes nodes,
// as a library: the container runtime runs the binary for each pod
// sandbox, and the plugin asks the node's Weft agent, over its local API
// socket, to connect the pod. The agent does the work (the address from
// the node's podCIDR, the veth, the identity, policy and the datapath) and
// answers once the pod's policy is enforced, so no pod runs unprotected.
//
// Two modes, told apart by the configuration of an ADD:
//
//   - primary (weft-cni is the conflist's first plugin): the agent
//     connects the pod and the plugin prints the interfaces, address and
//     route it made;
//   - chained (after a veth-based plugin such as bridge or ptp, which the
//     runtime's prevResult shows): the previous plugin connected the pod;
//     the agent enforces policy on the host end of its veth, and the
//     plugin passes prevResult on unchanged.
//
// CHECK and DEL carry no mode (their prevResult is the whole ADD's
// result in both): the agent knows the attachment it made by container id
// and interface.
package plugin

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"syscall"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/weftmesh/weft/agent/api"
)

// Agent is what the plugin asks of the local agent; *api.Client is one.
type Agent interface {
	CNIAdd(ctx context.Context, req api.CNIRequest) (api.CNIResult, error)
	CNIDel(ctx context.Context, req api.CNIRequest) error
	CNICheck(ctx context.Context, req api.CNIRequest) error
	Health(ctx context.Context) (api.Health, error)
}

// Sandbox reads the pod's network namespace.
type Sandbox interface {
	// Gone reports whether nothing of the pod is left in the namespace at
	// path: the path is empty, missing or no longer a namespace, or it
	// has no interface ifName.
	Gone(path, ifName string) (bool, error)
	// CheckAddress returns an error unless ifName exists in the namespace,
	// is up and has addr.
	CheckAddress(path, ifName string, addr netip.Addr) error
}

// Plugin runs the CNI commands. Its members are the outside world, so
// tests give it fakes; New gives it the real ones.
type Plugin struct {
	// Agent returns a client of the agent on socket.
	Agent func(socket string) Agent
	Host  HostLinks
	Pods  Sandbox
	// Stdout receives the result; the runtime reads it.
	Stdout io.Writer
	// Stderr receives the log when the configuration names no logFile.
	Stderr io.Writer
	// Backoff is the first wait between ADD's attempts while the agent
	// is not up; it doubles to MaxBackoff.
	Backoff, MaxBackoff time.Duration
}

// New returns a plugin that talks to the real agent and kernel.
func New(stdout, stderr io.Writer) *Plugin {
	return &Plugin{
		Agent:      func(socket string) Agent { return api.NewClient(socket) },
		Host:       NetlinkHost{},
		Pods:       NetlinkSandbox{},
		Stdout:     stdout,
		Stderr:     stderr,
		Backoff:    200 * time.Millisecond,
		MaxBackoff: 2 * time.Second,
	}
}

// VersionInfo is what VERSION answers.
func VersionInfo() version.PluginInfo { return version.PluginSupports(SupportedVersions...) }

// Funcs are the plugin's commands for skel.
func (p *Plugin) Funcs() skel.CNIFuncs {
	return skel.CNIFuncs{Add: p.Add, Del: p.Del, Check: p.Check, Status: p.Status, GC: p.GC}
}

// delTimeout and checkTimeout bound DEL and CHECK: the runtime retries a
// DEL that failed, so one that hangs only delays that.
const (
	delTimeout    = 30 * time.Second
	checkTimeout  = 30 * time.Second
	statusTimeout = 5 * time.Second
)

// call is one command's parsed input.
type call struct {
	conf *Config
	pod  PodArgs
	log  *slog.Logger
	args *skel.CmdArgs
	done func()
}

func (p *Plugin) parse(cmd string, args *skel.CmdArgs, needPod bool) (*call, error) {
	conf, err := ParseConfig(args.StdinData)
	if err != nil {
		return nil, types.NewError(types.ErrInvalidNetworkConfig, "weft-cni: invalid network configuration", err.Error())
	}
	log, done := openLog(conf.LogFile, p.Stderr)
	log = log.With("cmd", cmd, "containerID", args.ContainerID, "ifName", args.IfName)
	c := &call{conf: conf, log: log, args: args, done: done}
	fail := func(e *types.Error) (*call, error) {
		log.Error(e.Msg, "details", e.Details)
		done()
		return nil, e
	}
	if cmd == "ADD" || cmd == "DEL" || cmd == "CHECK" {
		if err := ValidateCall(args.ContainerID, args.IfName, args.Netns); err != nil {
			return fail(types.NewError(types.ErrInvalidEnvironmentVariables, "weft-cni: invalid call from the runtime", err.Error()))
		}
	}
	c.pod, err = ParseArgs(args.Args)
	if err == nil && needPod {
		err = c.pod.Require()
	}
	if err != nil {
		return fail(types.NewError(types.ErrInvalidEnvironmentVariables, "weft-cni: invalid CNI_ARGS", err.Error()))
	}
	c.log = c.log.With("pod", c.pod.String())
	return c, nil
}

func (c *call) request() api.CNIRequest {
	return api.CNIRequest{
		ContainerID:  c.args.ContainerID,
		Netns:        c.args.Netns,
		IfName:       c.args.IfName,
		PodNamespace: c.pod.Namespace,
		PodName:      c.pod.Name,
		PodUID:       c.pod.UID,
	}
}

// Add connects the pod (CNI ADD).
func (p *Plugin) Add(args *skel.CmdArgs) error {
	c, err := p.parse("ADD", args, true)
	if err != nil {
		return err
	}
	defer c.done()
	if args.Netns == "" {
		return c.fail(types.NewError(types.ErrInvalidNetNS, "weft-cni: ADD without CNI_NETNS", "the runtime must pass the pod sandbox's network namespace"))
	}
	// Whether it is a namespace the agent finds out as it enters it; a
	// path that is not there is the runtime's mistake, said here.
	if _, err := os.Stat(args.Netns); err != nil {
		return c.fail(types.NewError(types.ErrInvalidNetNS, fmt.Sprintf("weft-cni: the pod's network namespace %s (CNI_NETNS) is not there: was the sandbox removed?", args.Netns), err.Error()))
	}
	req := c.request()
	if c.conf.Chained() {
		ch, err := ChainedInput(c.conf.PrevResult, args.IfName, p.Host, c.conf.ChainedAfter)
		if err != nil {
			return c.fail(types.NewError(types.ErrInvalidNetworkConfig, err.Error(), ""))
		}
		req.Chained = &ch
		c.log = c.log.With("mode", "chained", "ip", ch.IP, "hostIface", ch.HostIface)
	} else {
		c.log = c.log.With("mode", "primary")
	}

	ctx, cancel := context.WithTimeout(context.Background(), c.conf.Timeout)
	defer cancel()
	start := time.Now()
	res, err := p.addWithRetry(ctx, c, req)
	if err != nil {
		return c.fail(agentError(err, c.conf, "connecting pod "+c.pod.String(), time.Since(start)))
	}
	c.log.Info("pod connected", "ip", res.IP, "identity", res.Identity, "took", time.Since(start).Round(time.Millisecond))

	if c.conf.Chained() {
		if err := PrintResult(p.Stdout, c.conf.PrevResult, c.conf.CNIVersion); err != nil {
			return c.fail(types.NewError(types.ErrInternal, "weft-cni: printing the result", err.Error()))
		}
		return nil
	}
	var hostMAC string
	if l, err := p.Host.Link(res.HostIface); err == nil {
		hostMAC = l.MAC
	} else {
		c.log.Debug("the host end of the pod's veth is not visible here: its MAC is left out of the result", "hostIface", res.HostIface, "err", err)
	}
	r, err := PrimaryResult(res, args.IfName, args.Netns, hostMAC)
	if err != nil {
		return c.fail(types.NewError(types.ErrInternal, "weft-cni: the Weft agent's answer is not a usable result: is weft-cni the same version as the agent?", err.Error()))
	}
	if err := PrintResult(p.Stdout, r, c.conf.CNIVersion); err != nil {
		return c.fail(types.NewError(types.ErrInternal, "weft-cni: printing the result", err.Error()))
	}
	return nil
}

// addWithRetry calls CNIAdd until it succeeds, fails for a reason waiting
// does not cure, or ctx ends. ADD is idempotent on the agent's side, so
// asking again after a lost answer is safe.
func (p *Plugin) addWithRetry(ctx context.Context, c *call, req api.CNIRequest) (api.CNIResult, error) {
	agent := p.Agent(c.conf.AgentSocket)
	wait := p.Backoff
	for attempt := 1; ; attempt++ {
		res, err := agent.CNIAdd(ctx, req)
		if err == nil {
			return res, nil
		}
		if !transient(err) || ctx.Err() != nil {
			return api.CNIResult{}, err
		}
		c.log.Info("the agent is not ready; waiting", "attempt", attempt, "retryIn", wait, "err", err)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return api.CNIResult{}, err
		case <-t.C:
		}
		wait = min(2*wait, p.MaxBackoff)
	}
}

// transient reports whether err may clear by waiting: the agent's socket is
// not there or nobody listens (the agent is starting or restarting), the
// agent says it is not ready yet, or the connection broke before an
// answer came (the agent stopped mid-request).
func transient(err error) bool {
	var ae *api.Error
	if errors.As(err, &ae) {
		return ae.Code == api.CodeUnavailable
	}
	return errors.Is(err, api.ErrAgentNotRunning) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// Del disconnects the pod (CNI DEL): deleting what was never added, or is
// gone, succeeds.
func (p *Plugin) Del(args *skel.CmdArgs) error {
	c, err := p.parse("DEL", args, false)
	if err != nil {
		return err
	}
	defer c.done()
	ctx, cancel := context.WithTimeout(context.Background(), delTimeout)
	defer cancel()
	err = p.Agent(c.conf.AgentSocket).CNIDel(ctx, c.request())
	switch {
	case err == nil:
		c.log.Info("pod disconnected")
		return nil
	case errors.Is(err, api.ErrNotFound):
		c.log.Info("the agent has no such attachment: nothing to delete")
		return nil
	case errors.Is(err, api.ErrAgentNotRunning):
		// The agent removes on its start the attachments of sandboxes
		// that are gone; one whose namespace still holds the pod's
		// interface needs the agent, so the runtime must retry.
		gone, gerr := p.Pods.Gone(args.Netns, args.IfName)
		if gerr != nil {
			c.log.Warn("cannot tell whether the pod's namespace is gone", "netns", args.Netns, "err", gerr)
		}
		if gone {
			c.log.Info("the agent is not running and the pod's namespace is gone: nothing left to delete here", "netns", args.Netns)
			return nil
		}
	}
	return c.fail(agentError(err, c.conf, "disconnecting pod "+c.pod.String(), 0))
}

// Check verifies the attachment (CNI CHECK): the agent's view of it, and
// the pod's interface with the address the runtime recorded.
func (p *Plugin) Check(args *skel.CmdArgs) error {
	c, err := p.parse("CHECK", args, false)
	if err != nil {
		return err
	}
	defer c.done()
	if args.Netns == "" {
		return c.fail(types.NewError(types.ErrInvalidNetNS, "weft-cni: CHECK without CNI_NETNS", "the runtime must pass the pod sandbox's network namespace"))
	}
	if c.conf.PrevResult == nil {
		return c.fail(types.NewError(types.ErrInvalidNetworkConfig, "weft-cni: CHECK without prevResult", "the runtime must pass the result of ADD as prevResult"))
	}
	ctx, cancel := context.WithTimeout(context.Background(), checkTimeout)
	defer cancel()
	if err := p.Agent(c.conf.AgentSocket).CNICheck(ctx, c.request()); err != nil {
		return c.fail(agentError(err, c.conf, "checking pod "+c.pod.String(), 0))
	}
	prev, err := types100.NewResultFromResult(c.conf.PrevResult)
	if err != nil {
		return c.fail(types.NewError(types.ErrDecodingFailure, "weft-cni: reading prevResult", err.Error()))
	}
	ip, err := podIPv4(prev, args.IfName)
	if err != nil {
		return c.fail(types.NewError(types.ErrInvalidNetworkConfig, "weft-cni: CHECK: prevResult has no address of the pod", err.Error()))
	}
	if err := p.Pods.CheckAddress(args.Netns, args.IfName, ip); err != nil {
		return c.fail(types.NewError(types.ErrInternal, "weft-cni: the pod's interface is not as ADD left it", err.Error()))
	}
	return nil
}

// Status reports whether the plugin can connect pods (CNI 1.1 STATUS): the
// agent answers and its datapath is attached. Peers and etcd are left out
// on purpose: a remote node that is down must not make this node refuse
// its own pods.
func (p *Plugin) Status(args *skel.CmdArgs) error {
	c, err := p.parse("STATUS", args, false)
	if err != nil {
		return err
	}
	defer c.done()
	ctx, cancel := context.WithTimeout(context.Background(), statusTimeout)
	defer cancel()
	h, err := p.Agent(c.conf.AgentSocket).Health(ctx)
	if err != nil {
		e := agentError(err, c.conf, "asking the agent's health", 0)
		e.Code = types.ErrPluginNotAvailable
		return c.fail(e)
	}
	for _, ch := range h.Checks {
		if ch.Name == "datapath" && !ch.OK {
			return c.fail(types.NewError(types.ErrPluginNotAvailable,
				"the Weft agent's datapath is not attached: it cannot enforce policy on new pods yet; see its log: kubectl -n weft-system logs -l app.kubernetes.io/component=agent",
				ch.Message))
		}
		if !ch.OK {
			c.log.Warn("the agent reports a failed check; pods can still be connected", "check", ch.Name, "message", ch.Message)
		}
	}
	return nil
}

// GC (CNI 1.1) passes: the agent removes the attachments of pods that are
// gone itself, from what the API server and the node's namespaces say.
func (p *Plugin) GC(args *skel.CmdArgs) error {
	c, err := p.parse("GC", args, false)
	if err != nil {
		return err
	}
	defer c.done()
	c.log.Info("GC: nothing to do, the agent collects the attachments of gone pods itself", "validAttachments", len(c.conf.ValidAttachments))
	return nil
}

func (c *call) fail(e *types.Error) error {
	c.log.Error(e.Msg, "code", e.Code, "details", e.Details)
	return e
}

// agentError is the CNI error of a failed call to the agent: what is
// wrong and what to do about it.
func agentError(err error, conf *Config, doing string, waited time.Duration) *types.Error {
	sock := conf.AgentSocket
	var ae *api.Error
	switch {
	case errors.Is(err, api.ErrAgentNotRunning):
		what := "no " + sock
		if socketExists(sock) {
			what = "nothing listens on " + sock
		}
		msg := fmt.Sprintf("the Weft agent is not running on this node (%s): is the weft DaemonSet pod running? kubectl -n weft-system get pods -l app.kubernetes.io/component=agent -o wide", what)
		if waited > 0 {
			msg += fmt.Sprintf(" (waited %s, the network configuration's timeout)", waited.Round(time.Second))
		}
		return types.NewError(types.ErrTryAgainLater, msg, err.Error())
	case errors.Is(err, api.ErrPermission):
		return types.NewError(types.ErrInternal, fmt.Sprintf("the Weft agent's socket %s refuses this process: the runtime must run weft-cni as root", sock), err.Error())
	case errors.Is(err, context.DeadlineExceeded):
		return types.NewError(types.ErrTryAgainLater, fmt.Sprintf("the Weft agent did not finish %s within %s (the network configuration's timeout): see its log: kubectl -n weft-system logs -l app.kubernetes.io/component=agent", doing, conf.Timeout), err.Error())
	case errors.As(err, &ae) && ae.Code == api.CodeUnavailable:
		return types.NewError(types.ErrTryAgainLater, fmt.Sprintf("the Weft agent is not ready for %s: %s", doing, ae.Message), "")
	case errors.As(err, &ae) && ae.Code == api.CodeNotSupported:
		return types.NewError(types.ErrInternal, fmt.Sprintf("the Weft agent on %s does not serve CNI: is it the weft DaemonSet's agent (Kubernetes mode), and as new as weft-cni?", sock), ae.Message)
	case errors.As(err, &ae):
		return types.NewError(types.ErrInternal, fmt.Sprintf("the Weft agent failed %s: %s", doing, ae.Message), string(ae.Code))
	}
	return types.NewError(types.ErrInternal, fmt.Sprintf("weft-cni: %s: talking to the Weft agent on %s failed", doing, sock), err.Error())
}

func socketExists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}
