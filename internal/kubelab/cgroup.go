package kubelab

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// cgroupPrefix names every cgroup root a node gets: weft-kube-<netns>.
// The name ties it to the node's network namespace, so Cleanup can tell a
// crashed node's cgroups (their namespace is gone) from a running one's.
const cgroupPrefix = "weft-kube-"

func cgroupName(netns string) string { return cgroupPrefix + netns }

// cgroupMountsFile is read for the machine's cgroup hierarchies.
var cgroupMountsFile = "/proc/self/mountinfo"

// cgroupMounts lists the mount point of every cgroup hierarchy (v1 and
// v2), one per hierarchy.
func cgroupMounts() ([]string, error) {
	f, err := os.Open(cgroupMountsFile)
	if err != nil {
		return nil, fmt.Errorf("reading the mounts: %w", err)
	}
	defer f.Close()
	var mounts []string
	seen := map[uint64]bool{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		mp, fstype, ok := parseMountinfo(sc.Text())
		if !ok || (fstype != "cgroup" && fstype != "cgroup2") {
			continue
		}
		var st syscall.Stat_t
		if err := syscall.Stat(mp, &st); err != nil || seen[st.Dev] {
			continue // gone meanwhile, or a hierarchy mounted twice
		}
		seen[st.Dev] = true
		mounts = append(mounts, mp)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(mounts) == 0 {
		return nil, errors.New("no cgroup hierarchy is mounted (kubelet needs /sys/fs/cgroup)")
	}
	sort.Strings(mounts)
	return mounts, nil
}

// parseMountinfo returns the mount point and type of a mountinfo line.
func parseMountinfo(line string) (mountPoint, fstype string, ok bool) {
	fields := strings.Fields(line)
	sep := -1
	for i, f := range fields {
		if f == "-" {
			sep = i
			break
		}
	}
	if len(fields) < 5 || sep < 0 || sep+1 >= len(fields) {
		return "", "", false
	}
	return unescapeMount(fields[4]), fields[sep+1], true
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// cgroupSet is one node's cgroup root in every hierarchy.
type cgroupSet struct {
	name  string
	roots []string
}

// createCgroups makes <hierarchy>/name in every hierarchy: kubelet needs
// its cgroupRoot to exist in all of them, and refuses to start otherwise.
func createCgroups(name string) (*cgroupSet, error) {
	mounts, err := cgroupMounts()
	if err != nil {
		return nil, err
	}
	s := &cgroupSet{name: name}
	for _, m := range mounts {
		p := filepath.Join(m, name)
		if err := os.Mkdir(p, 0o755); err != nil {
			_ = s.remove(time.Second)
			if errors.Is(err, fs.ErrExist) {
				return nil, fmt.Errorf("cgroup %s exists: a node already runs in this network namespace, or a crashed test left it (kubelab.Cleanup removes cgroups whose namespace is gone)", p)
			}
			return nil, fmt.Errorf("creating cgroup %s: %w", p, err)
		}
		s.roots = append(s.roots, p)
		// A new cpuset cgroup has no CPUs and no memory nodes; processes
		// cannot join it until they are copied from the parent.
		for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
			v, err := os.ReadFile(filepath.Join(m, f))
			if err != nil {
				continue // not the cpuset hierarchy
			}
			if err := os.WriteFile(filepath.Join(p, f), v, 0o644); err != nil {
				_ = s.remove(time.Second)
				return nil, fmt.Errorf("setting %s of %s: %w", f, p, err)
			}
		}
	}
	return s, nil
}

// dirs lists every cgroup directory of the set, deepest first.
func (s *cgroupSet) dirs() []string {
	var out []string
	for _, r := range s.roots {
		_ = filepath.WalkDir(r, func(p string, d fs.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				out = append(out, p)
			}
			return nil
		})
	}
	sort.Slice(out, func(i, j int) bool {
		di, dj := strings.Count(out[i], "/"), strings.Count(out[j], "/")
		if di != dj {
			return di > dj
		}
		return out[i] < out[j]
	})
	return out
}

// procs lists the processes in the set's cgroups.
func (s *cgroupSet) procs() []int {
	seen := map[int]bool{}
	var pids []int
	for _, d := range s.dirs() {
		data, err := os.ReadFile(filepath.Join(d, "cgroup.procs"))
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(data)) {
			if pid, err := strconv.Atoi(f); err == nil && !seen[pid] {
				seen[pid] = true
				pids = append(pids, pid)
			}
		}
	}
	sort.Ints(pids)
	return pids
}

// inCgroup reports whether pid is (still) below cgroup root name in some
// hierarchy: checked right before a kill, so a PID reused by a process
// elsewhere is never signalled.
func inCgroup(pid int, name string) bool {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(data), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) == 3 && (parts[2] == "/"+name || strings.HasPrefix(parts[2], "/"+name+"/")) {
			return true
		}
	}
	return false
}

// kill sends SIGKILL to every process in the set's cgroups and returns
// how many there were.
func (s *cgroupSet) kill() int {
	n := 0
	for _, pid := range s.procs() {
		if inCgroup(pid, s.name) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
			n++
		}
	}
	return n
}

// remove kills what is left in the cgroups and removes them, deepest
// first, retrying until timeout (a killed process leaves its cgroup only
// once it has fully exited). What will not go is reported with the
// processes still in it.
func (s *cgroupSet) remove(timeout time.Duration) error {
	if s == nil {
		return nil
	}
	deadline := time.Now().Add(timeout)
	for {
		s.kill()
		var left []string
		var lastErr error
		for _, d := range s.dirs() {
			if err := syscall.Rmdir(d); err != nil && !errors.Is(err, syscall.ENOENT) {
				left = append(left, d)
				lastErr = err
			}
		}
		if len(left) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			var who []string
			for _, pid := range s.procs() {
				who = append(who, fmt.Sprintf("%d (%s)", pid, cmdline(pid)))
			}
			return fmt.Errorf("cgroups of %s not removed after %v: %s: %v; processes still in them: %v", s.name, timeout, strings.Join(left, ", "), lastErr, who)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// exists lists the set's roots that are still there.
func (s *cgroupSet) existing() []string {
	var out []string
	for _, r := range s.roots {
		if _, err := os.Stat(r); err == nil {
			out = append(out, r)
		}
	}
	return out
}

// Cleanup removes what crashed tests left: the cgroups of nodes whose
// network namespace no longer exists, with the container processes still
// in them (a node's other processes live in its namespace, which the
// lab's teardown ends). Run it after the lab's own cleanup (`meshctl lab
// down --all`); a running node is never touched. It returns the cgroup
// roots it removed.
func Cleanup(log *slog.Logger) ([]string, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	mounts, err := cgroupMounts()
	if err != nil {
		return nil, err
	}
	sets := map[string]*cgroupSet{}
	for _, m := range mounts {
		entries, err := os.ReadDir(m)
		if err != nil {
			continue
		}
		for _, e := range entries {
			if !e.IsDir() || !strings.HasPrefix(e.Name(), cgroupPrefix) {
				continue
			}
			ns := strings.TrimPrefix(e.Name(), cgroupPrefix)
			if _, err := os.Stat(filepath.Join(netnsDir, ns)); err == nil {
				continue // its node may be running
			}
			s := sets[e.Name()]
			if s == nil {
				s = &cgroupSet{name: e.Name()}
				sets[e.Name()] = s
			}
			s.roots = append(s.roots, filepath.Join(m, e.Name()))
		}
	}
	var removed []string
	var errs []error
	names := make([]string, 0, len(sets))
	for n := range sets {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		s := sets[n]
		log.Warn("removing the cgroups of a node whose network namespace is gone", "cgroup", n, "processes", len(s.procs()))
		if err := s.remove(10 * time.Second); err != nil {
			errs = append(errs, err)
			continue
		}
		removed = append(removed, s.roots...)
	}
	return removed, errors.Join(errs...)
}
