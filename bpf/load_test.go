package bpf

import (
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/rlimit"
	"github.com/weftmesh/weft/internal/testutil"
)

// verifierStats is what the kernel's verifier reports for one program.
type verifierStats struct {
	Insns       int    // instructions in the object
	Verified    uint32 // instructions the verifier walked (bpf_prog_info.verified_insns)
	TotalStates int    // states the verifier kept ("total_states")
	PeakStates  int    // most states alive at once ("peak_states")
}

var statsRE = regexp.MustCompile(`total_states (\d+) peak_states (\d+)`)

// programLoader loads one program of the embedded object at a time against
// one shared set of maps, as Open does.
type programLoader struct {
	spec *ebpf.CollectionSpec
	maps *ebpf.Collection
}

func newProgramLoader(t testing.TB) *programLoader {
	t.Helper()
	testutil.Privileged(t)
	must(t, rlimit.RemoveMemlock())
	spec, err := loadDatapath()
	must(t, err)
	must(t, configure(spec, Config{}.withDefaults()))
	mapsOnly := spec.Copy()
	mapsOnly.Programs = nil
	coll, err := ebpf.NewCollection(mapsOnly)
	must(t, err)
	t.Cleanup(coll.Close)
	return &programLoader{spec: spec, maps: coll}
}

func (l *programLoader) names() []string {
	var names []string
	for n := range l.spec.Programs {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// load loads program name; logLevel asks the verifier for its statistics.
func (l *programLoader) load(name string, logLevel ebpf.LogLevel) (*ebpf.Program, error) {
	one := l.spec.Copy()
	for n := range one.Programs {
		if n != name {
			delete(one.Programs, n)
		}
	}
	c, err := ebpf.NewCollectionWithOptions(one, ebpf.CollectionOptions{
		MapReplacements: l.maps.Maps,
		Programs:        ebpf.ProgramOptions{LogLevel: logLevel},
	})
	if err != nil {
		return nil, fmt.Errorf("program %s: %w", name, loadError(err))
	}
	defer c.Close()
	return c.DetachProgram(name), nil
}

// stats loads program name once and returns what the verifier reported.
func (l *programLoader) stats(t testing.TB, name string) verifierStats {
	t.Helper()
	p, err := l.load(name, ebpf.LogLevelStats)
	must(t, err)
	defer p.Close()
	s := verifierStats{Insns: len(l.spec.Programs[name].Instructions)}
	info, err := p.Info()
	must(t, err)
	var ok bool
	if s.Verified, ok = info.VerifiedInstructions(); !ok {
		t.Skip("the kernel does not report verified instructions (needs Linux 5.16)")
	}
	if m := statsRE.FindStringSubmatch(p.VerifierLog); m != nil {
		s.TotalStates, _ = strconv.Atoi(m[1])
		s.PeakStates, _ = strconv.Atoi(m[2])
	}
	return s
}

// BenchmarkLoad measures what loading each program costs: the time of one
// load (nearly all of it the kernel's verifier; the maps are created once,
// outside the timing) and the verifier's work, as verified-insns (the
// instructions it walked; the object's own count is insns) and states.
// The agent loads these programs on a joining node's critical path.
func BenchmarkLoad(b *testing.B) {
	l := newProgramLoader(b)
	for _, name := range l.names() {
		b.Run(name, func(b *testing.B) {
			s := l.stats(b, name)
			b.ResetTimer()
			for b.Loop() {
				p, err := l.load(name, 0)
				if err != nil {
					b.Fatal(err)
				}
				p.Close()
			}
			b.ReportMetric(float64(s.Verified), "verified-insns")
			b.ReportMetric(float64(s.Insns), "insns")
			b.ReportMetric(float64(s.TotalStates), "states")
		})
	}
}

// verifierBudget is the most instructions the verifier may walk for one
// program. The programs need about 4,000; when the shared code was inlined
// into every path they needed about 185,000, and about 80 ms per program to
// load. A change that brings that back fails here rather than in the
// mesh's join time.
const verifierBudget = 20_000

// TestVerifierBudget loads every program and checks the verifier's work
// against verifierBudget; -v prints the figures.
func TestVerifierBudget(t *testing.T) {
	l := newProgramLoader(t)
	for _, name := range l.names() {
		s := l.stats(t, name)
		t.Logf("%s: %d instructions, verifier walked %d (%d states, peak %d)", name, s.Insns, s.Verified, s.TotalStates, s.PeakStates)
		if s.Verified > verifierBudget {
			t.Errorf("%s: the verifier walked %d instructions, more than the budget of %d: keep shared code in global functions (bpf/lib/common.h, __weft_func)", name, s.Verified, verifierBudget)
		}
	}
}

// BenchmarkOpen measures a whole Open of an ephemeral datapath (maps and
// all four programs, loaded side by side as the agent does) and its Close.
func BenchmarkOpen(b *testing.B) {
	testutil.Privileged(b)
	for b.Loop() {
		d, err := Open(Config{Ephemeral: true})
		if err != nil {
			b.Fatal(err)
		}
		d.Close()
	}
}
