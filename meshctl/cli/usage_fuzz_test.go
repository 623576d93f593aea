package cli

import (
	"slices"
	"strings"
	"testing"
)

// FuzzHoistGlobalFlags: whatever the command line, moving the global
// flags only reorders it (nothing is lost, added or changed), and the
// words before the first non-flag are the ones moved.
func FuzzHoistGlobalFlags(f *testing.F) {
	for _, s := range []string{
		"--socket\x00/s\x00status", "-o=json\x00policy\x00list", "--socket\x00a\x00nodes\x00--socket\x00b",
		"-o\x00json\x00lab\x00up", "--socket", "--help", "status\x00--socket\x00x", "--output=json\x00--\x00status",
	} {
		f.Add(s)
	}
	cmds := commands()
	f.Fuzz(func(t *testing.T, line string) {
		args := strings.Split(line, "\x00")
		if len(args) > 32 {
			return
		}
		out, err := hoistGlobalFlags(cmds, args)
		if err != nil {
			if _, ok := err.(*usageError); !ok {
				t.Fatalf("hoist %q: %T %v, want a usage error", args, err, err)
			}
			return
		}
		a, b := slices.Clone(args), slices.Clone(out)
		slices.Sort(a)
		slices.Sort(b)
		if !slices.Equal(a, b) {
			t.Fatalf("hoist %q = %q: not a reordering", args, out)
		}
	})
}
