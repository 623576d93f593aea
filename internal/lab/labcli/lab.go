// Package labcli is the lab's command line: `meshctl lab up|status|exec|down`.
// It is the weft-lab binary (internal/lab/cmd/weft-lab), which meshctl runs
// for `meshctl lab ...` with the rest of its command line. The lab builds
// network namespaces with netlink in-process; keeping it out of meshctl
// keeps meshctl, the CLI that talks to agents over their socket, free of
// netlink (internal/deptest).
//
// weft-lab speaks as `meshctl lab`, the name people use: its help, its
// messages ("meshctl: ...") and its hints are those meshctl lab had, so the
// lab behaves the same whichever way it is started.
//
// The commands are defined here for every OS, so --help shows the same
// commands everywhere; their actions are in lab_linux.go (network
// namespaces are Linux's) and lab_other.go (a refusal saying so). The
// package imports github.com/urfave/cli/v2 under its own name, cli, as
// meshctl/cli does.
package labcli

import (
	"context"
	"fmt"

	"io"

	"github.com/urfave/cli/v2"

	"github.com/weftmesh/weft/internal/cliout"
	"github.com/weftmesh/weft/internal/version"
)

// Run runs the lab with args, the command line after `meshctl lab` (or
// after weft-lab), reading stdin and writing to stdout and stderr. It
// returns the command's error instead of printing it; ExitStatus turns it
// into what the binary prints and its exit status.
//
// The command line is run as `meshctl lab ARGS...` by an app named meshctl
// whose only command is lab, so help, usage errors and completions come
// out exactly as they did when the lab was part of meshctl.
func Run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	// urfave/cli reports an unknown command through a callback that cannot
	// return an error; it is kept here and returned.
	var notFound error
	app := &cli.App{
		Name:                 "meshctl",
		Usage:                "the Weft lab: sites, NAT and nodes in network namespaces",
		Version:              version.Version,
		EnableBashCompletion: true,
		Commands:             []*cli.Command{command()},
		Reader:               stdin,
		Writer:               stdout,
		ErrWriter:            stderr,
		CommandNotFound: func(c *cli.Context, name string) {
			parent := "meshctl"
			if c.Command != nil {
				if full := c.Command.FullName(); full != "" && full != parent {
					parent += " " + full
				}
			}
			notFound = fmt.Errorf("unknown command %q for %q: see %s --help", name, parent, parent)
		},
		// The default handler exits the process on a cli.Exit error; Run
		// leaves that to ExitStatus, so a test's process survives.
		ExitErrHandler: func(*cli.Context, error) {},
	}
	if err := app.RunContext(ctx, append([]string{"meshctl", "lab"}, args...)); err != nil {
		return err
	}
	return notFound
}

// ExitStatus prints err on stderr and returns the process's exit status
// (cliout.ExitStatus, shared with the other command).
func ExitStatus(err error, stderr io.Writer) int { return cliout.ExitStatus(err, stderr) }

func command() *cli.Command {
	return &cli.Command{
		Name:  "lab",
		Usage: "build and drive a network-namespace lab of sites, NAT and nodes (Linux, needs root)",
		Description: `The lab is a set of network namespaces on this machine: per site a router
with a LAN bridge, one namespace per node and per workload, and an "internet"
namespace between the routers; a NAT site masquerades its nodes, as an
endpoint-independent (eim) or a symmetric NAT. 'lab cut' makes two sites'
routers drop the UDP between them, 'lab heal' undoes it. Underlay
addresses come from 198.18.0.0/15. The lab never touches the machine's own
interfaces, addresses, routes or firewall. See docs/lab.md.`,
		Subcommands: []*cli.Command{labUpCommand(), labStatusCommand(), labExecCommand(), labCutCommand(), labHealCommand(), labDownCommand()},
	}
}

func labUpCommand() *cli.Command {
	return &cli.Command{
		Name:  "up",
		Usage: "bring up a lab from a topology file or from counts; it stays up after meshctl exits (or, with --hold, while it runs)",
		UsageText: `meshctl lab up -f topo.yaml [--name NAME] [--hold] [--owns PATH]... [--record FILE]
meshctl lab up [--name NAME] [--sites N] [--nodes-per-site M] [--nat-site] [--nat-kind eim|symmetric] [--workloads-per-node K] [--hold]`,
		Description: `Generated labs have sites site1..siteN and nodes site<i>-n<j>; with --nat-site
the last site is behind NAT. Site i's LAN is 198.18.<i>.0/24 (router .1, nodes
from .10); the routers meet on 198.19.0.0/24. Remove the lab with
'meshctl lab down NAME'.

--nat-kind chooses that NAT (and implies --nat-site): eim is
endpoint-independent mapping, one external port per inner socket whatever
it sends to (a home router; hole punching works); symmetric is a new random
port for every destination (a carrier or hotel NAT; only a relay connects
two nodes behind such NATs). In a topology file each site says it with
'nat: eim', 'nat: symmetric' or 'nat: true' (eim).

With --hold the lab lives only while the command runs: it prints the lab and
waits; Ctrl-C or SIGTERM removes the lab, and a lab whose command was killed
is taken by the next 'lab down --all'.

--owns PATH (repeatable) names host paths that belong to what will run in
the lab, such as agents' state directories and bpffs pins: 'lab down'
removes them with the lab. Only paths below /run/, /tmp/, /var/tmp/ and
/sys/fs/bpf/ are accepted. --record FILE appends the lab's name and id to
FILE, for 'lab down --recorded FILE' (what 'make clean' runs): that removes
the labs recorded there and no other.`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "file", Aliases: []string{"f"}, Usage: "topology file (YAML, see docs/lab.md)"},
			&cli.StringFlag{Name: "name", Usage: "lab name: lowercase letters and digits; prefixes its namespaces (wl-NAME-...); overrides the file's name", Value: "demo", DefaultText: "the file's name, or demo"},
			&cli.IntFlag{Name: "sites", Usage: "number of sites", Value: 3},
			&cli.IntFlag{Name: "nodes-per-site", Usage: "nodes on each site's LAN", Value: 2},
			&cli.BoolFlag{Name: "nat-site", Usage: "put the last site behind NAT (an eim NAT unless --nat-kind says otherwise)"},
			&cli.StringFlag{Name: "nat-kind", Usage: "the last site's NAT: `KIND` eim (endpoint-independent mapping) or symmetric (a port per destination); implies --nat-site", DefaultText: "eim"},
			&cli.IntFlag{Name: "workloads-per-node", Usage: "workload namespaces joined to each node by a veth pair", Value: 0},
			&cli.BoolFlag{Name: "hold", Usage: "keep the lab only while this command runs: Ctrl-C or SIGTERM removes it"},
			&cli.StringSliceFlag{Name: "owns", Usage: "host `PATH` (below /run, /tmp, /var/tmp or /sys/fs/bpf) that 'lab down' removes with the lab; repeatable"},
			&cli.PathFlag{Name: "record", Usage: "append the lab's name and id to `FILE`, for 'lab down --recorded FILE'"},
		},
		Action: labUp,
	}
}

func labStatusCommand() *cli.Command {
	return &cli.Command{
		Name:      "status",
		Usage:     "show labs: their routers, nodes, workloads, namespaces, addresses, NAT kinds and cuts",
		ArgsUsage: "[NAME]",
		Description: `Without NAME every lab is shown. A lab is "in use" while the process that
created it runs (a test); 'meshctl lab up' hands its lab over ("detached").
Namespaces with the lab prefix that no lab claims are listed as leftovers.`,
		Flags:  []cli.Flag{cliout.Flag()},
		Action: labStatus,
	}
}

func labExecCommand() *cli.Command {
	return &cli.Command{
		Name:      "exec",
		Usage:     "run a command inside a node, workload or router namespace",
		ArgsUsage: "NODE -- CMD [ARGS...]",
		UsageText: "meshctl lab exec [--lab NAME] NODE -- CMD [ARGS...]",
		Description: `NODE is a node, workload or router name (or "internet"). Only the network
namespace is entered: the command sees this machine's files. Its exit status
is meshctl's. Example: meshctl lab exec site3-n1 -- ping -c 2 198.18.1.10`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "lab", Usage: "the lab (needed when more than one is up)"},
		},
		Action: labExec,
	}
}

func labCutCommand() *cli.Command {
	return &cli.Command{
		Name:      "cut",
		Usage:     "silently drop all UDP between two sites (TCP and ping still pass): the data path breaks, the control plane stays",
		ArgsUsage: "SITE_A SITE_B",
		UsageText: "meshctl lab cut [--lab NAME] [-o table|json] SITE_A SITE_B",
		Description: `Both sites' routers drop every UDP packet from the other site and to it:
its LAN and its router's internet address (what a NAT site's nodes appear as),
also on flows that were already there. Nothing answers, as when a path across
the internet fails. TCP and ICMP pass, so etcd and the agents' control plane
stay up while WireGuard between the two sites stops: what a relay or another
path has to take over.

The cut is recorded in the lab's state: 'meshctl lab status' shows it and
'meshctl lab heal SITE_A SITE_B' (from any shell) undoes it. Cutting a pair
that is cut already changes nothing. SITE_A and SITE_B are site names (see
'meshctl lab status'), in either order; --lab can be left out while only one
lab is up. With -o json it prints the lab's cuts afterwards.
Example: meshctl lab cut site1 site3`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "lab", Usage: "the lab (needed when more than one is up)"},
			cliout.Flag(),
		},
		Action: labCut,
	}
}

func labHealCommand() *cli.Command {
	return &cli.Command{
		Name:      "heal",
		Usage:     "undo 'lab cut': UDP between two sites (or, with --all, between every pair cut) passes again",
		ArgsUsage: "SITE_A SITE_B | --all",
		UsageText: "meshctl lab heal [--lab NAME] [-o table|json] SITE_A SITE_B | --all",
		Description: `Removes the routers' drop rules for the pair, from the state of the lab
whoever cut it. Healing a pair that is not cut changes nothing. With -o json
it prints the lab's cuts afterwards. Example: meshctl lab heal --all`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "lab", Usage: "the lab (needed when more than one is up)"},
			&cli.BoolFlag{Name: "all", Usage: "heal every cut of the lab"},
			cliout.Flag(),
		},
		Action: labHeal,
	}
}

func labDownCommand() *cli.Command {
	return &cli.Command{
		Name:      "down",
		Usage:     "remove a lab, the labs recorded in a file (--recorded), or every lab no running process holds (--all --yes)",
		ArgsUsage: "NAME | --recorded FILE | --all [--yes]",
		Description: `Stops the processes started in the lab, kills anything else still inside its
namespaces, deletes the namespaces with their links, and removes the host
paths the lab owns (lab up --owns).

--recorded FILE removes the labs 'lab up --record FILE' wrote there, each
only if it is still the lab recorded (a lab of the same name made later, by
another run or user, is left alone), and empties FILE. 'make clean' does this
with the labs the checkout's demo brought up.

--all takes every lab no running process holds: labs left up by
'meshctl lab up' — yours and other users', with whatever runs in them —,
labs whose creator crashed, and namespaces with the lab prefix (wl-) that no
lab claims. It lists them, with who made them, and removes them only with
--yes. Labs whose creating process still runs (a test in progress, lab up
--hold) are left alone: remove one of those by name.`,
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "all", Usage: "list every lab not held by a running process, and leftovers; with --yes remove them"},
			&cli.BoolFlag{Name: "yes", Usage: "with --all: remove what it lists"},
			&cli.PathFlag{Name: "recorded", Usage: "remove the labs recorded in `FILE` by 'lab up --record'"},
		},
		Action: labDown,
	}
}
