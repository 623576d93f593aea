package lab

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Down removes the lab: it stops the processes started in it (by PID, each
// checked against its recorded start time), stops any other process still
// inside a lab namespace (those would keep the namespace and its links
// alive), deletes the namespaces (which deletes every link in them), and
// finally the state file. If something cannot be removed the state file
// stays, so a later Down or DownAll can finish the job. Down twice is fine.
func (l *Lab) Down() error {
	var errs []error
	l.mu.Lock()
	procs := append([]*Process(nil), l.procs...)
	l.mu.Unlock()
	for _, p := range procs {
		if err := p.Stop(); err != nil {
			errs = append(errs, fmt.Errorf("stopping %s (pid %d): %w", p.Name, p.Pid, err))
		}
	}
	if l.state != nil {
		// Records of processes another handle started, also after this
		// handle was made.
		l.state.refresh()
		for _, r := range l.state.snapshot().Processes {
			if err := stopProcess(r.procRef, nil); err != nil {
				errs = append(errs, fmt.Errorf("stopping %s (pid %d): %w", r.Name, r.Pid, err))
			}
		}
	}
	names := l.Namespaces()
	if extra, err := listNetns(l.prefix()); err == nil {
		names = mergeNames(names, extra)
	}
	if err := removeNamespaces(names, l.log); err != nil {
		errs = append(errs, err)
	}
	if len(errs) == 0 && l.state != nil {
		// Only once nothing runs in the lab any more: what ran there
		// wrote to these paths.
		for _, p := range l.state.snapshot().Owns {
			if checkOwnedPath(p) != nil {
				continue // a state file edited by hand
			}
			if err := os.RemoveAll(p); err != nil {
				errs = append(errs, fmt.Errorf("removing %s: %w", p, err))
			}
		}
	}
	if len(errs) == 0 && l.state != nil {
		if err := l.state.remove(l.Name()); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("removing lab %s: %w", l.Name(), errors.Join(errs...))
	}
	l.log.Info("lab removed", "lab", l.Name())
	return nil
}

func mergeNames(a, b []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, n := range append(append([]string(nil), a...), b...) {
		if !seen[n] {
			seen[n] = true
			out = append(out, n)
		}
	}
	return out
}

// termGrace is how long a process left in a lab namespace has to exit
// after SIGTERM before it gets SIGKILL.
const termGrace = 3 * time.Second

// removeNamespaces stops what still runs inside the namespaces, then
// deletes them.
func removeNamespaces(names []string, log *slog.Logger) error {
	var errs []error
	present := names[:0:0]
	for _, n := range names {
		if netnsExists(n) {
			present = append(present, n)
		}
	}
	if len(present) == 0 {
		return nil
	}
	inside, err := processesIn(present)
	if err != nil {
		errs = append(errs, err)
	}
	// SIGTERM first, so a process that cleans up outside the namespace
	// does: a userspace WireGuard helper unlinks its UAPI socket in the
	// host-wide /var/run/wireguard, which deleting the namespace does
	// not. What is still there after a short grace gets SIGKILL.
	gone := func(pid int) bool { _, ok := procStart(pid); return !ok }
	for pid, ns := range inside {
		log.Warn("stopping a process left inside a lab namespace", "pid", pid, "netns", ns, "cmd", procCmdline(pid))
		_ = syscall.Kill(pid, syscall.SIGTERM)
	}
	waitFor(func() bool {
		for pid := range inside {
			if !gone(pid) {
				return false
			}
		}
		return true
	}, termGrace)
	for pid := range inside {
		if !gone(pid) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	for pid := range inside {
		if !waitFor(func() bool { return gone(pid) }, 10*time.Second) {
			errs = append(errs, fmt.Errorf("process %d inside the lab did not exit after SIGKILL", pid))
		}
	}
	for _, n := range present {
		if err := deleteNetns(n); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// processesIn finds the processes whose network namespace is one of the
// named ones, by comparing namespace inodes.
func processesIn(names []string) (map[int]string, error) {
	type key struct{ dev, ino uint64 }
	want := map[key]string{}
	for _, n := range names {
		var st syscall.Stat_t
		if err := syscall.Stat(NetnsPath(n), &st); err == nil {
			want[key{st.Dev, st.Ino}] = n
		}
	}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("listing processes: %w", err)
	}
	self := os.Getpid()
	found := map[int]string{}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self || pid == 1 {
			continue
		}
		var st syscall.Stat_t
		if err := syscall.Stat(filepath.Join("/proc", e.Name(), "ns", "net"), &st); err != nil {
			continue
		}
		if ns, ok := want[key{st.Dev, st.Ino}]; ok {
			found[pid] = ns
		}
	}
	return found, nil
}

func procCmdline(pid int) string {
	data, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	return strings.TrimSpace(strings.ReplaceAll(string(data), "\x00", " "))
}

// CleanupReport says what DownAll did.
type CleanupReport struct {
	Removed []string // labs removed (or, from PlanDownAll, to remove)
	Skipped []string // labs left alone because their owner process still runs
	Orphans []string // namespaces with the lab prefix and no state file, removed
}

// DownAll removes every lab that no running process holds: labs left up by
// `meshctl lab up`, labs whose creating process crashed, and namespaces
// with the wl- prefix that no state file claims (a crash before the state
// was written, or a state directory removed by hand). Labs whose owner is
// still running (a test in progress) are skipped; remove one of those by
// name with Load and Down.
func DownAll() error {
	_, err := DownAllReport(nil)
	return err
}

// DownAllReport is DownAll with progress lines and a report.
func DownAllReport(log *slog.Logger) (*CleanupReport, error) {
	return DownMatching(log, func(string) bool { return true })
}

// PlanDownAll says what DownAllReport would remove, removing nothing:
// `meshctl lab down --all` shows it and asks for --yes.
func PlanDownAll() (*CleanupReport, error) {
	return downMatching(nil, func(string) bool { return true }, true)
}

// DownMatching is DownAllReport limited to the labs (and leftover
// namespaces wl-<lab>-...) whose name match accepts: a test cleans up its
// own crashed labs without touching labs others left running.
func DownMatching(log *slog.Logger, match func(lab string) bool) (*CleanupReport, error) {
	return downMatching(log, match, false)
}

func downMatching(log *slog.Logger, match func(lab string) bool, dryRun bool) (*CleanupReport, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	rep := &CleanupReport{}
	// Namespaces are listed before state files: Up writes its state file
	// before it creates a namespace, so every namespace seen here whose lab
	// is being built has a state file by the time the files are read.
	all, err := listNetns(nsPrefix)
	if err != nil {
		return rep, err
	}
	names, err := Names()
	if err != nil {
		return rep, err
	}
	var errs []error
	claimed := map[string]bool{}
	for _, name := range names {
		claimed[name] = true
		if !match(name) {
			continue
		}
		s, err := readState(name)
		if err != nil {
			if errors.Is(err, ErrNotFound) {
				continue // removed meanwhile
			}
			// A damaged state file: remove the file and let the prefix
			// scan below take the namespaces.
			claimed[name] = false
			if dryRun {
				rep.Removed = append(rep.Removed, name)
				continue
			}
			log.Warn("removing a damaged lab state file", "lab", name, "err", err)
			if err := os.Remove(statePath(name)); err != nil {
				errs = append(errs, err)
			}
			_ = os.RemoveAll(logDir(name))
			continue
		}
		if s.st.Owner != nil && s.st.Owner.alive() {
			log.Info("skipping a lab in use", "lab", name, "owner", s.st.Owner.Pid)
			rep.Skipped = append(rep.Skipped, name)
			continue
		}
		if dryRun {
			rep.Removed = append(rep.Removed, name)
			continue
		}
		l, err := Load(name)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		l.log = log
		log.Info("removing lab", "lab", name, "namespaces", len(l.netns))
		if err := l.Down(); err != nil {
			errs = append(errs, err)
			continue
		}
		rep.Removed = append(rep.Removed, name)
	}
	var orphans []string
	for _, ns := range all {
		if lab := labOfNetns(ns); !claimed[lab] && match(lab) {
			orphans = append(orphans, ns)
		}
	}
	sort.Strings(orphans)
	if dryRun {
		rep.Orphans = orphans
		return rep, errors.Join(errs...)
	}
	if len(orphans) > 0 {
		log.Info("removing namespaces no lab claims", "count", len(orphans))
		if err := removeNamespaces(orphans, log); err != nil {
			errs = append(errs, err)
		}
		rep.Orphans = orphans
	}
	return rep, errors.Join(errs...)
}

// Orphans lists namespaces with the lab prefix that no state file claims.
func Orphans() ([]string, error) {
	all, err := listNetns(nsPrefix)
	if err != nil {
		return nil, err
	}
	names, err := Names()
	if err != nil {
		return nil, err
	}
	claimed := map[string]bool{}
	for _, n := range names {
		claimed[n] = true
	}
	var out []string
	for _, ns := range all {
		if !claimed[labOfNetns(ns)] {
			out = append(out, ns)
		}
	}
	return out, nil
}

// labOfNetns extracts <lab> from wl-<lab>-...; lab names have no dash, so
// this is unambiguous.
func labOfNetns(ns string) string {
	rest := strings.TrimPrefix(ns, nsPrefix)
	lab, _, _ := strings.Cut(rest, "-")
	return lab
}
