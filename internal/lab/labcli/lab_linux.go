package labcli

import (
	"context"
	"errors"
	"fmt"

	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/weftmesh/weft/internal/cliout"
	"github.com/weftmesh/weft/internal/lab"
)

func labSpecFromFlags(c *cli.Context) (*lab.Spec, error) {
	if c.Args().Present() {
		return nil, fmt.Errorf("lab up takes no arguments, got %q: use --name NAME or -f FILE", c.Args().First())
	}
	if file := c.String("file"); file != "" {
		for _, f := range []string{"sites", "nodes-per-site", "nat-site", "nat-kind", "workloads-per-node"} {
			if c.IsSet(f) {
				return nil, fmt.Errorf("--%s cannot be used with -f: the file describes the topology", f)
			}
		}
		data, err := os.ReadFile(file)
		if err != nil {
			return nil, fmt.Errorf("reading the topology: %w", err)
		}
		spec, err := lab.ParseSpec(data, file)
		if err != nil {
			return nil, err
		}
		if c.IsSet("name") {
			spec.Name = c.String("name")
			if err := spec.Validate(); err != nil {
				return nil, fmt.Errorf("--name: %w", err)
			}
		}
		return spec, nil
	}
	sites, nodes, workloads := c.Int("sites"), c.Int("nodes-per-site"), c.Int("workloads-per-node")
	switch {
	case sites < 1 || sites > lab.MaxSites:
		return nil, fmt.Errorf("--sites must be between 1 and %d, got %d", lab.MaxSites, sites)
	case nodes < 1 || nodes > lab.MaxNodesPerSite:
		return nil, fmt.Errorf("--nodes-per-site must be between 1 and %d, got %d", lab.MaxNodesPerSite, nodes)
	case workloads < 0 || workloads > lab.MaxWorkloadsPerNode:
		return nil, fmt.Errorf("--workloads-per-node must be between 0 and %d, got %d", lab.MaxWorkloadsPerNode, workloads)
	}
	natSite, kind := c.Bool("nat-site"), lab.NATEIM
	if c.IsSet("nat-kind") {
		k, err := lab.ParseNATKind(c.String("nat-kind"))
		if err != nil || k == lab.NATNone {
			return nil, fmt.Errorf("--nat-kind: %q is not a kind of NAT for the NAT site: use eim (endpoint-independent mapping) or symmetric (a port per destination)", c.String("nat-kind"))
		}
		natSite, kind = true, k
	}
	spec := lab.Generate(c.String("name"), sites, nodes, natSite)
	if natSite {
		spec.Sites[len(spec.Sites)-1].NATKind = kind
	}
	spec.AddWorkloads(workloads)
	if err := spec.Validate(); err != nil {
		var se *lab.SpecError
		if errors.As(err, &se) && se.Field == "name" {
			return nil, fmt.Errorf("--name: %s", se.Problem)
		}
		return nil, err
	}
	return spec, nil
}

// trailingFlags lets flags follow the lab name (`lab status demo -o json`):
// urfave/cli stops parsing flags at the first argument, so the remaining
// arguments are scanned for the command's own flags. bools are flags
// without a value; each of values holds the names of one flag with a
// value, canonical name first (aliases are separate entries in urfave/cli's
// flag set).
func trailingFlags(c *cli.Context, bools []string, values ...[]string) ([]string, error) {
	var pos []string
	args := c.Args().Slice()
	for i := 0; i < len(args); i++ {
		a := args[i]
		name, val, hasVal := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !strings.HasPrefix(a, "-") || a == "-" {
			pos = append(pos, a)
			continue
		}
		group := slices.IndexFunc(values, func(names []string) bool { return slices.Contains(names, name) })
		switch {
		case slices.Contains(bools, name):
			if hasVal {
				return nil, fmt.Errorf("--%s takes no value", name)
			}
			if err := c.Set(name, "true"); err != nil {
				return nil, err
			}
		case group >= 0:
			if !hasVal {
				if i+1 >= len(args) {
					return nil, fmt.Errorf("%s needs a value", a)
				}
				i++
				val = args[i]
			}
			if err := c.Set(values[group][0], val); err != nil {
				return nil, err
			}
		default:
			return nil, fmt.Errorf("unknown flag %s", a)
		}
	}
	return pos, nil
}

func needRoot(what string) error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("meshctl lab %s needs root (it works with network namespaces): run it with sudo", what)
	}
	return nil
}
func labUp(c *cli.Context) error {
	spec, err := labSpecFromFlags(c)
	if err != nil {
		return err
	}
	hold, record := c.Bool("hold"), c.Path("record")
	if hold && record != "" {
		return errors.New("--hold and --record do not go together: a held lab removes itself")
	}
	owns := c.StringSlice("owns")
	for _, p := range owns {
		if err := lab.CheckOwnedPath(p); err != nil {
			return fmt.Errorf("--owns: %w", err)
		}
	}
	if err := needRoot("up"); err != nil {
		return err
	}
	// Ctrl-C while building: Up removes what it made.
	ctx, stop := signal.NotifyContext(c.Context, os.Interrupt, syscall.SIGTERM)
	defer stop()
	log := slog.New(&progressHandler{w: c.App.ErrWriter})
	l, err := lab.Up(ctx, spec, log)
	if err != nil {
		return err
	}
	if len(owns) > 0 {
		if err := l.Own(owns...); err != nil {
			_ = l.Down()
			return err
		}
	}
	w := c.App.Writer
	if hold {
		return holdLab(ctx, w, l)
	}
	// The lab outlives this process; `lab down --all` may now take it.
	if err := l.Detach(); err != nil {
		_ = l.Down()
		return err
	}
	if record != "" {
		if err := recordLab(record, l); err != nil {
			return fmt.Errorf("lab %s is up, but recording it failed (remove it with 'meshctl lab down %s'): %w", l.Name(), l.Name(), err)
		}
	}
	if err := printLabStatus(w, l.Status()); err != nil {
		return err
	}
	// From the last node (behind NAT with --nat-site) to the first: the
	// direction that works through a NAT.
	nodes := l.Nodes()
	from, to := nodes[len(nodes)-1], nodes[0]
	fmt.Fprintf(w, "\nLab %s is up and stays up. Try:\n", l.Name())
	fmt.Fprintf(w, "  meshctl lab exec --lab %s %s -- ping -c 2 %s\n", l.Name(), from.Name, to.Underlay)
	fmt.Fprintf(w, "  meshctl lab exec --lab %s %s -- ip route\n", l.Name(), from.Name)
	if r := l.Routers(); len(r) > 1 {
		fmt.Fprintf(w, "  meshctl lab cut --lab %s %s %s   (drop their UDP; lab heal undoes it)\n", l.Name(), r[0].Site, r[len(r)-1].Site)
	}
	fmt.Fprintf(w, "  meshctl lab status %s\n", l.Name())
	fmt.Fprintf(w, "  meshctl lab down %s\n", l.Name())
	return nil
}

func labStatus(c *cli.Context) error {
	args, err := trailingFlags(c, nil, []string{"output", "o"})
	if err != nil {
		return err
	}
	format, err := cliout.Format(c)
	if err != nil {
		return err
	}
	if len(args) > 1 {
		return fmt.Errorf("lab status takes at most one lab name, got %d: %s", len(args), strings.Join(args, " "))
	}
	if err := needRoot("status"); err != nil {
		return err
	}
	var names []string
	if len(args) == 1 {
		names = args
	} else if names, err = lab.Names(); err != nil {
		return err
	}
	var statuses []lab.Status
	for _, name := range names {
		l, err := lab.Load(name)
		if err != nil && len(args) == 1 {
			return err
		}
		if err != nil {
			// One damaged lab does not hide the others.
			fmt.Fprintf(c.App.ErrWriter, "warning: %v\n", err)
			continue
		}
		statuses = append(statuses, l.Status())
	}
	orphans, err := lab.Orphans()
	if err != nil {
		return err
	}
	w := c.App.Writer
	if format == "json" {
		if len(args) == 1 {
			return cliout.JSON(w, statuses[0])
		}
		return cliout.JSON(w, struct {
			Labs      []lab.Status `json:"labs"`
			Leftovers []string     `json:"leftoverNamespaces,omitempty"`
		}{statuses, orphans})
	}
	if len(statuses) == 0 {
		fmt.Fprintln(w, "No labs. Start one with: meshctl lab up --sites 3 --nodes-per-site 2 --nat-site")
	}
	for i, s := range statuses {
		if i > 0 {
			fmt.Fprintln(w)
		}
		if err := printLabStatus(w, s); err != nil {
			return err
		}
	}
	if len(orphans) > 0 && len(args) == 0 {
		fmt.Fprintf(w, "\nLeftover namespaces no lab claims (remove with 'meshctl lab down --all --yes'):\n  %s\n", strings.Join(orphans, "\n  "))
	}
	return nil
}

func printLabStatus(w io.Writer, s lab.Status) error {
	state := "up"
	switch {
	case !s.Complete:
		state = "incomplete (being built, or its creator crashed)"
	case len(s.Missing) > 0:
		state = fmt.Sprintf("damaged: %d namespaces missing (%s)", len(s.Missing), strings.Join(s.Missing, ", "))
	}
	holder := "detached"
	if s.OwnerPid != 0 {
		holder = fmt.Sprintf("in use by pid %d", s.OwnerPid)
		if !s.InUse {
			holder = fmt.Sprintf("creator pid %d is gone", s.OwnerPid)
		}
	}
	fmt.Fprintf(w, "Lab %s: %s, %s, created %s\n", s.Name, state, holder, s.Created.Local().Format(time.DateTime))
	rows := [][]string{{"internet", "internet", "", s.Internet, "198.19.0.1/24", "", ""}}
	for _, r := range s.Routers {
		nat := natColumn(r.NATKind)
		rows = append(rows, []string{r.Name, "router", r.Site, r.Netns,
			fmt.Sprintf("%s/%d %s/24", r.LANAddr, r.LAN.Bits(), r.WANAddr), "", nat})
		for _, n := range s.Nodes {
			if n.Site != r.Site {
				continue
			}
			nat := natColumn(n.NATKind)
			rows = append(rows, []string{n.Name, "node", n.Site, n.Netns, fmt.Sprintf("%s/%d", n.Underlay, r.LAN.Bits()), "via " + n.Gateway.String(), nat})
			for _, wl := range s.Workloads {
				if wl.Node == n.Name {
					rows = append(rows, []string{wl.Name, "workload", n.Site, wl.Netns, "", fmt.Sprintf("veth %s = %s on %s", wl.Iface, wl.HostIface, n.Name), ""})
				}
			}
		}
	}
	if err := cliout.Table(w, []string{"name", "kind", "site", "netns", "address", "route", "nat"}, rows); err != nil {
		return err
	}
	if len(s.Cuts) > 0 {
		fmt.Fprintf(w, "\nCut (the routers drop all UDP between them; 'meshctl lab heal --lab %s SITE_A SITE_B' undoes it):\n", s.Name)
		for _, cut := range s.Cuts {
			fmt.Fprintf(w, "  %s\n", cut)
		}
	}
	if len(s.Processes) > 0 {
		fmt.Fprintln(w)
		var prows [][]string
		for _, p := range s.Processes {
			state := "running"
			if !p.Running {
				state = "exited"
			}
			prows = append(prows, []string{p.Name, fmt.Sprint(p.Pid), state, p.Netns, p.Log})
		}
		return cliout.Table(w, []string{"process", "pid", "state", "netns", "output"}, prows)
	}
	return nil
}

// natColumn is the nat column of a router or node: the site's NAT kind,
// named as in topology files, or "no".
func natColumn(kind lab.NATKind) string {
	if kind == lab.NATNone || kind == "" {
		return "no"
	}
	return string(kind)
}

func labExec(c *cli.Context) error {
	args := c.Args().Slice()
	if len(args) == 0 {
		return errors.New("lab exec needs a node and a command: meshctl lab exec NODE -- CMD [ARGS...]")
	}
	target, cmdArgs := args[0], args[1:]
	if len(cmdArgs) > 0 && cmdArgs[0] == "--" {
		cmdArgs = cmdArgs[1:]
	}
	if target == "--" || len(cmdArgs) == 0 {
		return errors.New("lab exec needs a node and a command: meshctl lab exec NODE -- CMD [ARGS...]")
	}
	if err := needRoot("exec"); err != nil {
		return err
	}
	l, err := chooseLab(c)
	if err != nil {
		return err
	}
	cmd, err := l.Command(context.Background(), target, cmdArgs...)
	if err != nil {
		return err
	}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = c.App.Reader, c.App.Writer, c.App.ErrWriter
	// The command gets Ctrl-C from the terminal itself; meshctl waits for it.
	signal.Ignore(os.Interrupt)
	defer signal.Reset(os.Interrupt)
	err = cmd.Run()
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		if code := exit.ExitCode(); code > 0 {
			return cli.Exit("", code)
		}
		return cli.Exit(fmt.Sprintf("meshctl: %s in %s: %v", cmdArgs[0], target, err), 1)
	}
	return err
}

// chooseLab loads the lab --lab names, or the only lab that is up.
func chooseLab(c *cli.Context) (*lab.Lab, error) {
	name := c.String("lab")
	if name == "" {
		names, err := lab.Names()
		if err != nil {
			return nil, err
		}
		switch len(names) {
		case 0:
			return nil, errors.New("no lab is up: start one with meshctl lab up")
		case 1:
			name = names[0]
		default:
			return nil, fmt.Errorf("%d labs are up (%s): choose one with --lab NAME", len(names), strings.Join(names, ", "))
		}
	}
	return lab.Load(name)
}

// cutsJSON is what cut and heal print with -o json: the lab's cuts after
// the command.
type cutsJSON struct {
	Lab  string    `json:"lab"`
	Cuts []lab.Cut `json:"cuts"`
}

func printCuts(c *cli.Context, format string, l *lab.Lab, cuts []lab.Cut, message string) error {
	if format == "json" {
		if cuts == nil {
			cuts = []lab.Cut{}
		}
		return cliout.JSON(c.App.Writer, cutsJSON{Lab: l.Name(), Cuts: cuts})
	}
	_, err := fmt.Fprintln(c.App.Writer, message)
	return err
}

func labCut(c *cli.Context) error {
	args, err := trailingFlags(c, nil, []string{"lab"}, []string{"output", "o"})
	if err != nil {
		return err
	}
	format, err := cliout.Format(c)
	if err != nil {
		return err
	}
	if len(args) != 2 {
		return fmt.Errorf("lab cut needs two site names, got %d%s: meshctl lab cut [--lab NAME] SITE_A SITE_B (the sites are in 'meshctl lab status')", len(args), listArgs(args))
	}
	if err := needRoot("cut"); err != nil {
		return err
	}
	l, err := chooseLab(c)
	if err != nil {
		return err
	}
	before := len(l.Cuts())
	if err := l.Cut(c.Context, args[0], args[1]); err != nil {
		return err
	}
	cuts := l.Cuts()
	msg := fmt.Sprintf("Cut %s <-> %s in lab %s: their routers drop all UDP between them; TCP and ping pass.\nUndo it with: meshctl lab heal --lab %s %s %s", args[0], args[1], l.Name(), l.Name(), args[0], args[1])
	if len(cuts) == before {
		msg = fmt.Sprintf("%s <-> %s in lab %s was cut already: nothing changed.", args[0], args[1], l.Name())
	}
	return printCuts(c, format, l, cuts, msg)
}

func labHeal(c *cli.Context) error {
	args, err := trailingFlags(c, []string{"all"}, []string{"lab"}, []string{"output", "o"})
	if err != nil {
		return err
	}
	format, err := cliout.Format(c)
	if err != nil {
		return err
	}
	all := c.Bool("all")
	switch {
	case all && len(args) > 0:
		return fmt.Errorf("give two site names or --all, not both (got %s and --all)", strings.Join(args, " "))
	case !all && len(args) != 2:
		return fmt.Errorf("lab heal needs two site names or --all, got %d%s: meshctl lab heal [--lab NAME] SITE_A SITE_B | --all", len(args), listArgs(args))
	}
	if err := needRoot("heal"); err != nil {
		return err
	}
	l, err := chooseLab(c)
	if err != nil {
		return err
	}
	before := len(l.Cuts())
	var msg string
	if all {
		if err := l.HealAll(c.Context); err != nil {
			return err
		}
		msg = fmt.Sprintf("Healed every cut of lab %s (%d).", l.Name(), before)
		if before == 0 {
			msg = fmt.Sprintf("Lab %s has no cuts: nothing changed.", l.Name())
		}
	} else {
		if err := l.Heal(c.Context, args[0], args[1]); err != nil {
			return err
		}
		msg = fmt.Sprintf("Healed %s <-> %s in lab %s: UDP between them passes again.", args[0], args[1], l.Name())
		if len(l.Cuts()) == before {
			msg = fmt.Sprintf("%s <-> %s in lab %s was not cut: nothing changed.", args[0], args[1], l.Name())
		}
	}
	return printCuts(c, format, l, l.Cuts(), msg)
}

// listArgs is " (a b)" for error messages, or nothing.
func listArgs(args []string) string {
	if len(args) == 0 {
		return ""
	}
	return " (" + strings.Join(args, " ") + ")"
}

// holdLab keeps the lab while the command runs and removes it when ctx
// ends (Ctrl-C, SIGTERM). The lab stays owned by this process, so another
// `lab down --all` leaves it alone while it runs and takes it if this
// process is killed.
func holdLab(ctx context.Context, w io.Writer, l *lab.Lab) error {
	if err := printLabStatus(w, l.Status()); err != nil {
		_ = l.Down()
		return err
	}
	fmt.Fprintf(w, "\nLab %s is up while this command runs: Ctrl-C (or SIGTERM) removes it.\n", l.Name())
	<-ctx.Done()
	if err := l.Down(); err != nil {
		return err
	}
	fmt.Fprintf(w, "Lab %s removed.\n", l.Name())
	return nil
}

func labDown(c *cli.Context) error {
	args, err := trailingFlags(c, []string{"all", "yes"}, []string{"recorded"})
	if err != nil {
		return err
	}
	all := c.Bool("all")
	if rec := c.Path("recorded"); rec != "" {
		if all || len(args) > 0 {
			return errors.New("--recorded FILE goes alone: not with a lab name or --all")
		}
		if err := needRoot("down"); err != nil {
			return err
		}
		return downRecorded(c.App.Writer, rec)
	}
	if c.Bool("yes") && !all {
		return errors.New("--yes goes with --all (lab down NAME needs no confirmation)")
	}
	switch {
	case all && len(args) > 0:
		return fmt.Errorf("give a lab name or --all, not both (got %q and --all)", args[0])
	case len(args) > 1:
		return fmt.Errorf("lab down takes one lab name, got %d: %s", len(args), strings.Join(args, " "))
	case !all && len(args) == 0:
		names, _ := lab.Names()
		if len(names) == 0 {
			return errors.New("lab down needs a lab name or --all (no lab is up)")
		}
		return fmt.Errorf("lab down needs a lab name or --all; labs: %s", strings.Join(names, ", "))
	}
	if err := needRoot("down"); err != nil {
		return err
	}
	log := slog.New(&progressHandler{w: c.App.ErrWriter})
	w := c.App.Writer
	if !all {
		l, err := lab.Load(args[0])
		if errors.Is(err, lab.ErrDamaged) {
			// Nothing in the file can be trusted: remove the file and
			// whatever namespaces carry this lab's prefix, as --all would.
			name := args[0]
			rep, err := lab.DownMatching(log, func(n string) bool { return n == name })
			if err != nil {
				return err
			}
			fmt.Fprintf(w, "Lab %s removed (its state file was damaged; %d leftover namespaces removed).\n", name, len(rep.Orphans))
			return nil
		}
		if err != nil {
			return err
		}
		if st := l.Status(); st.InUse {
			fmt.Fprintf(c.App.ErrWriter, "warning: lab %s is in use by pid %d; removing it anyway\n", l.Name(), st.OwnerPid)
		}
		if err := l.Down(); err != nil {
			return err
		}
		fmt.Fprintf(w, "Lab %s removed.\n", l.Name())
		return nil
	}
	if !c.Bool("yes") {
		return planDownAll(w)
	}
	rep, err := lab.DownAllReport(log)
	if rep == nil {
		return err
	}
	switch {
	case len(rep.Removed) == 0 && len(rep.Orphans) == 0:
		fmt.Fprintln(w, "Nothing to remove.")
	default:
		if len(rep.Removed) > 0 {
			fmt.Fprintf(w, "Removed labs: %s\n", strings.Join(rep.Removed, ", "))
		}
		if len(rep.Orphans) > 0 {
			fmt.Fprintf(w, "Removed %d leftover namespaces.\n", len(rep.Orphans))
		}
	}
	if len(rep.Skipped) > 0 {
		fmt.Fprintf(w, "Left alone (their creating process still runs): %s; remove one with 'meshctl lab down NAME'.\n", strings.Join(rep.Skipped, ", "))
	}
	return err
}

// progressHandler prints log records as short progress lines
// ("  site ready site=site1 nodes=2") for people watching a long command.
type progressHandler struct {
	w     io.Writer
	attrs []slog.Attr
}

func (h *progressHandler) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelInfo }

func (h *progressHandler) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	if r.Level >= slog.LevelWarn {
		b.WriteString(strings.ToLower(r.Level.String()) + ": ")
	}
	b.WriteString(r.Message)
	add := func(a slog.Attr) bool {
		fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
		return true
	}
	for _, a := range h.attrs {
		add(a)
	}
	r.Attrs(add)
	_, err := fmt.Fprintln(h.w, b.String())
	return err
}

func (h *progressHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &progressHandler{w: h.w, attrs: append(append([]slog.Attr(nil), h.attrs...), as...)}
}

func (h *progressHandler) WithGroup(string) slog.Handler { return h }

// planDownAll lists what `lab down --all` would remove, with whose labs
// they are, and removes nothing: --yes does.
func planDownAll(w io.Writer) error {
	rep, err := lab.PlanDownAll()
	if err != nil {
		return err
	}
	if len(rep.Removed) == 0 && len(rep.Orphans) == 0 {
		fmt.Fprintln(w, "Nothing to remove.")
		if len(rep.Skipped) > 0 {
			fmt.Fprintf(w, "Left alone (their creating process still runs): %s.\n", strings.Join(rep.Skipped, ", "))
		}
		return nil
	}
	fmt.Fprintln(w, "lab down --all would remove:")
	var rows [][]string
	for _, name := range rep.Removed {
		row := []string{name, "-", "-", "damaged state file"}
		if l, err := lab.Load(name); err == nil {
			st := l.Status()
			running := 0
			for _, p := range st.Processes {
				if p.Running {
					running++
				}
			}
			holder := "detached"
			if st.OwnerPid != 0 {
				holder = fmt.Sprintf("creator pid %d is gone", st.OwnerPid)
			}
			row = []string{name, orDash(st.CreatedBy), st.Created.Local().Format(time.DateTime), fmt.Sprintf("%s, %d processes running", holder, running)}
		}
		rows = append(rows, row)
	}
	if len(rows) > 0 {
		if err := cliout.Table(w, []string{"lab", "created by", "created", "state"}, rows); err != nil {
			return err
		}
	}
	if len(rep.Orphans) > 0 {
		fmt.Fprintf(w, "and %d leftover namespaces no lab claims:\n  %s\n", len(rep.Orphans), strings.Join(rep.Orphans, "\n  "))
	}
	if len(rep.Skipped) > 0 {
		fmt.Fprintf(w, "Left alone (their creating process still runs): %s.\n", strings.Join(rep.Skipped, ", "))
	}
	return fmt.Errorf("nothing was removed: the labs above may be other people's and in use; run 'meshctl lab down --all --yes' to remove them, or 'meshctl lab down NAME' for one")
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// recordLab appends "NAME ID" to the record file.
func recordLab(path string, l *lab.Lab) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(f, "%s %s\n", l.Name(), l.ID())
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// downRecorded removes the labs recorded in path that are still the labs
// recorded, and empties the file. A lab of the same name with another id
// was made by someone else after ours went, and is left alone.
func downRecorded(w io.Writer, path string) error {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		fmt.Fprintf(w, "No labs recorded in %s.\n", path)
		return nil
	}
	if err != nil {
		return err
	}
	var errs []error
	var keep []string
	for i, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, id, ok := strings.Cut(line, " ")
		if !ok || id == "" {
			fmt.Fprintf(w, "%s:%d: %q is not \"NAME ID\": skipped\n", path, i+1, line)
			continue
		}
		l, err := lab.Load(name)
		switch {
		case errors.Is(err, lab.ErrNotFound):
			fmt.Fprintf(w, "Lab %s is already gone.\n", name)
			continue
		case err != nil:
			errs = append(errs, err)
			keep = append(keep, line)
			continue
		}
		if st := l.Status(); st.ID != id {
			fmt.Fprintf(w, "Lab %s is not the one recorded (id %s, made %s by %s): left alone.\n", name, orDash(st.ID), st.Created.Local().Format(time.DateTime), orDash(st.CreatedBy))
			continue
		}
		if err := l.Down(); err != nil {
			errs = append(errs, err)
			keep = append(keep, line)
			continue
		}
		fmt.Fprintf(w, "Lab %s removed.\n", name)
	}
	if len(keep) == 0 {
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	} else if err := os.WriteFile(path, []byte(strings.Join(keep, "\n")+"\n"), 0o644); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
