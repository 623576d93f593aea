package cli

import (
	"fmt"
	"io"

	"github.com/urfave/cli/v2"

	"github.com/weftmesh/weft/internal/version"
)

func versionCommand() *cli.Command {
	return &cli.Command{
		Name:      "version",
		Usage:     "show the version, commit, build date and Go version of meshctl and of the local agent",
		UsageText: "meshctl version [--client] [--socket PATH] [-o table|json]",
		Description: `Prints meshctl's own build, then the local agent's, which it asks over
the agent's socket. Exit status is 1 when the agent cannot be reached;
--client shows meshctl's build only and needs no agent.`,
		Flags:  agentFlags(&cli.BoolFlag{Name: "client", Usage: "show only meshctl's version; do not ask the agent"}),
		Action: versionAction,
	}
}

// versionView is the -o json form.
type versionView struct {
	Client version.Info `json:"client"`
	// Agent is missing with --client or when the agent cannot be reached
	// (AgentError says why).
	Agent      *version.Info `json:"agent,omitempty"`
	AgentError string        `json:"agentError,omitempty"`
}

func versionAction(c *cli.Context) error {
	if err := noArgs(c); err != nil {
		return err
	}
	v := versionView{Client: version.Get()}
	var agentErr error
	if !c.Bool("client") {
		ctx, cancel := cmdContext(c)
		defer cancel()
		in, err := agentClient(c).Version(ctx)
		if err != nil {
			agentErr = err
			v.AgentError = err.Error()
		} else {
			v.Agent = &in
		}
	}
	if err := render(c, v, func() error { printVersion(c.App.Writer, v, c.Bool("client")); return nil }); err != nil {
		return err
	}
	if agentErr != nil {
		return fmt.Errorf("the agent's version: %w (meshctl version --client shows meshctl's alone)", agentErr)
	}
	return nil
}

func printVersion(w io.Writer, v versionView, clientOnly bool) {
	line := func(who string, in version.Info) {
		mod := ""
		if in.Modified {
			mod = ", modified"
		}
		fmt.Fprintf(w, "%-11s %s (commit %s%s, built %s, %s, %s)\n", who, in.Version, in.Commit, mod, in.BuildDate, in.GoVersion, in.Platform)
	}
	line("meshctl", v.Client)
	switch {
	case v.Agent != nil:
		line("weft-agent", *v.Agent)
	case !clientOnly:
		fmt.Fprintf(w, "%-11s unknown (the agent is not reachable)\n", "weft-agent")
	}
}
