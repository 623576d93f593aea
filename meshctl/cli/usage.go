package cli

import (
	"fmt"
	"reflect"
	"regexp"
	"sort"
	"strings"

	"github.com/urfave/cli/v2"
)

// UsageExitCode is meshctl's exit status for a command line it cannot
// run (unknown command or flag, missing or bad value): 2, as most Unix
// tools, so scripts tell it from a command that ran and failed (1).
const UsageExitCode = 2

// usageError is a command line meshctl cannot run: one line saying what is
// wrong, and one saying where to look.
type usageError struct {
	msg  string // "meshctl status: unknown flag --bogus"
	hint string
}

func (e *usageError) Error() string { return e.msg + "\n" + e.hint }

// ExitCode implements cli.ExitCoder: cliout.ExitStatus prints the message
// as it is and exits 2.
func (e *usageError) ExitCode() int { return UsageExitCode }

// usagef is a usage error of the command cmd ("meshctl status"): the
// message is prefixed by it, the hint points at its help.
func usagef(cmd, format string, args ...any) error {
	return &usageError{msg: cmd + ": " + fmt.Sprintf(format, args...), hint: fmt.Sprintf("See '%s --help'.", cmd)}
}

// unknownCommand names the command that does not exist and, when one
// is close, the one meant.
func unknownCommand(name, parent string, candidates []*cli.Command) error {
	var names []string
	for _, c := range candidates {
		names = append(names, c.Names()...)
	}
	msg := fmt.Sprintf("unknown command %q", name)
	if s := suggest(name, names); s != "" {
		msg += fmt.Sprintf(": did you mean %q?", s)
	}
	return usagef(parent, "%s", msg)
}

// suggest returns the candidate closest to what was typed, when it is
// close enough to be a typo (at most a third of its letters wrong, or
// typed as a prefix).
func suggest(typed string, candidates []string) string {
	best, bestD := "", 1<<30
	for _, c := range candidates {
		d := editDistance(typed, c)
		if strings.HasPrefix(c, typed) && len(typed) >= 2 {
			d = min(d, 1)
		}
		if d < bestD {
			best, bestD = c, d
		}
	}
	if best == "" || len(typed) < 3 || bestD > max(1, len(typed)/3) {
		return ""
	}
	return best
}

// editDistance is the Damerau–Levenshtein (optimal string alignment)
// distance: a swap of two letters ("stauts") counts once.
func editDistance(a, b string) int {
	ra, rb := []rune(a), []rune(b)
	d := make([][]int, len(ra)+1)
	for i := range d {
		d[i] = make([]int, len(rb)+1)
		d[i][0] = i
	}
	for j := range rb {
		d[0][j+1] = j + 1
	}
	for i := 1; i <= len(ra); i++ {
		for j := 1; j <= len(rb); j++ {
			cost := 1
			if ra[i-1] == rb[j-1] {
				cost = 0
			}
			d[i][j] = min(d[i-1][j]+1, d[i][j-1]+1, d[i-1][j-1]+cost)
			if i > 1 && j > 1 && ra[i-1] == rb[j-2] && ra[i-2] == rb[j-1] {
				d[i][j] = min(d[i][j], d[i-2][j-2]+1)
			}
		}
	}
	return d[len(ra)][len(rb)]
}

// conventions gives cmd and its subcommands meshctl's usage errors: one
// line and a hint instead of urfave/cli's whole help page, for a bad flag
// and for a missing required one.
func conventions(cmd *cli.Command) {
	cmd.OnUsageError = onUsageError
	var required []cli.Flag
	for _, f := range cmd.Flags {
		if rf, ok := f.(cli.RequiredFlag); ok && rf.IsRequired() {
			// urfave/cli prints the whole help for a missing required
			// flag; it is checked in Before instead. Every flag type of
			// urfave/cli has the field.
			if v := reflect.ValueOf(f).Elem().FieldByName("Required"); v.IsValid() && v.CanSet() {
				v.SetBool(false)
				required = append(required, f)
			}
		}
	}
	if len(required) > 0 {
		before := cmd.Before
		cmd.Before = func(c *cli.Context) error {
			var missing []string
			for _, f := range required {
				set := false
				for _, n := range f.Names() {
					set = set || c.IsSet(n)
				}
				if !set && !argsSetFlag(c.Args().Slice(), f) {
					missing = append(missing, flagName(f.Names()[0]))
				}
			}
			if len(missing) > 0 {
				word := "flag"
				if len(missing) > 1 {
					word = "flags"
				}
				return usagef(c.Command.HelpName, "missing the %s %s", word, strings.Join(missing, ", "))
			}
			if before != nil {
				return before(c)
			}
			return nil
		}
	}
	for _, sub := range cmd.Subcommands {
		conventions(sub)
	}
}

// argsSetFlag says whether f is among the arguments urfave/cli left
// unparsed: commands take flags after their positional arguments too
// (splitArgs), and set them in their action.
func argsSetFlag(args []string, f cli.Flag) bool {
	for _, a := range args {
		if a == "--" {
			return false
		}
		name, _, _ := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if strings.HasPrefix(a, "-") {
			for _, n := range f.Names() {
				if n == name {
					return true
				}
			}
		}
	}
	return false
}

func flagName(n string) string {
	if len(n) == 1 {
		return "-" + n
	}
	return "--" + n
}

// onUsageError turns the flag package's messages into meshctl's.
func onUsageError(c *cli.Context, err error, _ bool) error {
	cmd := "meshctl"
	var flags []cli.Flag
	if c.Command != nil && c.Command.HelpName != "" {
		cmd, flags = c.Command.HelpName, c.Command.Flags
	} else if c.App != nil {
		flags = c.App.Flags
	}
	msg := err.Error()
	switch {
	case strings.HasPrefix(msg, "flag provided but not defined: "):
		typed := strings.TrimLeft(strings.TrimPrefix(msg, "flag provided but not defined: "), "-")
		var names []string
		for _, f := range flags {
			names = append(names, f.Names()...)
		}
		sort.Strings(names)
		out := "unknown flag " + flagName(typed)
		if s := suggest(typed, names); s != "" {
			out += fmt.Sprintf(": did you mean %s?", flagName(s))
		}
		return usagef(cmd, "%s", out)
	case strings.HasPrefix(msg, "flag needs an argument: "):
		f := strings.TrimLeft(strings.TrimPrefix(msg, "flag needs an argument: "), "-")
		return usagef(cmd, "%s needs a value", flagName(f))
	}
	if m := badValue.FindStringSubmatch(msg); m != nil {
		// invalid value "x" for flag -count: parse error
		return usagef(cmd, "%s %s: %s", flagName(m[2]), m[1], m[3])
	}
	return usagef(cmd, "%s", msg)
}

// badValue is the flag package's message for a value that does not parse.
var badValue = regexp.MustCompile(`^invalid (?:boolean )?value (".*") for (?:flag )?-+([^:]+): (.*)$`)

// globalFlags may come before the command: `meshctl --socket S status`.
var globalFlags = map[string]bool{"socket": true, "output": true, "o": true, adminCredentialsFlag: true}

// hoistGlobalFlags moves the global flags written before the command to
// just after the command's name, where the command's own flags are
// parsed: `meshctl -o json policy list` runs as `meshctl policy list -o
// json`. A command line without a command is left alone (the app's own
// flags take it, for --help).
func hoistGlobalFlags(cmds []*cli.Command, args []string) ([]string, error) {
	var globals []string
	i := 0
	for i < len(args) {
		a := args[i]
		if !strings.HasPrefix(a, "-") || a == "-" || a == "--" {
			break
		}
		name, _, hasVal := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !globalFlags[name] {
			break
		}
		globals = append(globals, a)
		if !hasVal {
			if i+1 >= len(args) {
				return nil, usagef("meshctl", "%s needs a value", flagName(name))
			}
			i++
			globals = append(globals, args[i])
		}
		i++
	}
	if len(globals) == 0 {
		return args, nil
	}
	rest := args[i:]
	var leaf *cli.Command
	n := 0
	for level := cmds; n < len(rest); n++ {
		var found *cli.Command
		for _, c := range level {
			if c.HasName(rest[n]) {
				found = c
			}
		}
		if found == nil {
			break
		}
		leaf, level = found, found.Subcommands
	}
	if leaf == nil {
		return args, nil
	}
	for j := 0; j < len(globals); j++ {
		name, _, hasVal := strings.Cut(strings.TrimLeft(globals[j], "-"), "=")
		if commandFlag(leaf, name) == nil {
			path := "meshctl " + strings.Join(rest[:n], " ")
			return nil, usagef(path, "no flag %s here (global flags go to the command they precede, and this one has none of that name)", flagName(name))
		}
		if !hasVal {
			j++
		}
	}
	out := append(append(append([]string{}, rest[:n]...), globals...), rest[n:]...)
	return out, nil
}
