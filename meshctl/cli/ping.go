package cli

import (
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/weftmesh/weft/agent/api"
	"github.com/weftmesh/weft/internal/cliout"
)

func pingCommand() *cli.Command {
	return &cli.Command{
		Name:      "ping",
		Usage:     "probe another node through the tunnel: the path, the round trip of each probe, and why when none comes back",
		UsageText: "meshctl ping NODE|IP [-c COUNT] [--interval D] [--timeout D] [--socket PATH] [-o table|json]",
		Description: `Sends probes from the local agent to another node's agent through the
WireGuard tunnel (UDP to the node's mesh address, port 51837, which every
agent answers), like 'tailscale ping'. NODE is a node name or
cluster/node; IP is a node's mesh or underlay address, or any address
inside a node's CIDRs (the node owning it is probed).

Each probe prints its path (direct, via the peer's underlay ip:port that
WireGuard sends to) and its round trip. When a probe goes unanswered,
meshctl says why it likely was: no WireGuard handshake with the node since
it was added, or since a given time (UDP blocked, a NAT), no route (no node
owns the address), or the tunnel is up and the node's datapath dropped our
packets (read from its flow records) or its agent did not answer.

Exit status is 0 when at least one probe was answered, 1 when none was,
2 for a usage error.`,
		Flags: agentFlags(
			&cli.IntFlag{Name: "count", Aliases: []string{"c"}, Value: 3, Usage: "send `N` probes"},
			&cli.DurationFlag{Name: "interval", Value: time.Second, Usage: "wait `D` between probes"},
			&cli.DurationFlag{Name: "timeout", Value: 2 * time.Second, Usage: "wait `D` for each answer"},
		),
		Action: pingAction,
	}
}

// pingView is the -o json form.
type pingView struct {
	Target   string           `json:"target"`
	Probes   []api.PingResult `json:"probes"`
	Sent     int              `json:"sent"`
	Answered int              `json:"answered"`
	// Why is the reason the last unanswered probe gives, when none was
	// answered.
	Why string `json:"why,omitempty"`
}

func pingAction(c *cli.Context) error {
	pos, _, err := splitArgs(c)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usagef(c.Command.HelpName, "one node name or IP address is needed (see 'meshctl nodes'), got %d arguments", len(pos))
	}
	count, interval, timeout := c.Int("count"), c.Duration("interval"), c.Duration("timeout")
	switch {
	case count < 1:
		return usagef(c.Command.HelpName, "--count %d: send at least 1 probe", count)
	case timeout <= 0 || timeout > 30*time.Second:
		return usagef(c.Command.HelpName, "--timeout %s: use a time between 1ms and 30s", timeout)
	case interval < 0:
		return usagef(c.Command.HelpName, "--interval %s must not be negative", interval)
	}
	format, err := cliout.Format(c)
	if err != nil {
		return err
	}
	ctx, cancel := cmdContext(c)
	defer cancel()
	cl := agentClient(c)
	v := pingView{Target: pos[0], Probes: []api.PingResult{}}
	start := time.Now()
	for i := 0; i < count; i++ {
		if i > 0 {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(interval):
			}
		}
		r, err := cl.Ping(ctx, api.PingRequest{Target: pos[0], Timeout: api.Duration(timeout), Since: start})
		if err != nil {
			// No such node, no route, or no agent: nothing to probe.
			return err
		}
		v.Probes = append(v.Probes, r)
		v.Sent++
		if r.OK {
			v.Answered++
		} else {
			v.Why = r.Why
		}
		if format == "table" {
			printProbe(c.App.Writer, r, timeout)
		}
	}
	if v.Answered > 0 {
		v.Why = ""
	}
	if format == "json" {
		if err := render(c, v, nil); err != nil {
			return err
		}
	} else {
		printPingSummary(c.App.Writer, v)
	}
	if v.Answered == 0 {
		last := v.Probes[len(v.Probes)-1]
		why := v.Why
		if why == "" {
			why = last.Error
		}
		return errors.New("no answer from " + last.Cluster + "/" + last.Node + ": " + why)
	}
	return nil
}

func printProbe(w io.Writer, r api.PingResult, timeout time.Duration) {
	// "direct 198.18.1.10:51833" and "relay via NODE" say it all; a bare
	// "direct" (an older agent, or a learned endpoint) gets the endpoint.
	via := r.Path
	if (via == "direct" || via == "direct (learned)") && r.Endpoint != "" {
		via = "direct via " + r.Endpoint
	}
	if !r.PathSince.IsZero() {
		via += " (since " + r.PathSince.Format(time.TimeOnly) + ")"
	}
	if r.OK {
		fmt.Fprintf(w, "pong from %s (%s) %s in %s\n", r.Node, r.MeshIP, via, roundTrip(time.Duration(r.RTT)))
		return
	}
	fmt.Fprintf(w, "no answer from %s (%s) %s within %s\n", r.Node, r.MeshIP, via, timeout)
}

func printPingSummary(w io.Writer, v pingView) {
	var lo, hi, sum time.Duration
	for _, p := range v.Probes {
		if !p.OK {
			continue
		}
		d := time.Duration(p.RTT)
		if lo == 0 || d < lo {
			lo = d
		}
		hi = max(hi, d)
		sum += d
	}
	fmt.Fprintf(w, "%s sent, %d answered", plural(v.Sent, "probe"), v.Answered)
	if v.Answered > 0 {
		fmt.Fprintf(w, "; round trip min/avg/max %s/%s/%s", roundTrip(lo), roundTrip(sum/time.Duration(v.Answered)), roundTrip(hi))
	}
	// Why none was answered is the command's error, on stderr.
	fmt.Fprintln(w)
}

// plural is "1 probe" or "3 probes".
func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}
