package lab

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// stateDir holds one <lab>.json per lab and a <lab>/ directory with the
// output of processes started in it. /run is cleared at boot, as are the
// namespaces, so a state file never outlives its lab by a reboot.
var stateDir = "/run/weft-lab"

const stateVersion = 1

// Errors callers may test for.
var (
	ErrExists   = errors.New("lab: a lab with this name already exists")
	ErrNotFound = errors.New("lab: no such lab")
	// ErrDamaged is a state file that cannot be read as a lab's state
	// (e.g. `lab up` killed between creating it and writing it).
	ErrDamaged     = errors.New("lab: damaged state file")
	ErrUnknownName = errors.New("lab: unknown name")
)

// procRef identifies a process across PID reuse: the PID plus its start
// time in clock ticks since boot (field 22 of /proc/<pid>/stat).
type procRef struct {
	Pid   int    `json:"pid"`
	Start uint64 `json:"start"`
}

type procRecord struct {
	procRef
	Name  string   `json:"name"`
	Netns string   `json:"netns"`
	Args  []string `json:"args"`
	Log   string   `json:"log"`
}

type stateFile struct {
	Version    int          `json:"version"`
	Name       string       `json:"name"`
	Spec       *Spec        `json:"spec"`
	Created    time.Time    `json:"created"`
	Owner      *procRef     `json:"owner,omitempty"` // nil once detached (meshctl lab up)
	Complete   bool         `json:"complete"`
	Namespaces []string     `json:"namespaces"`
	Processes  []procRecord `json:"processes,omitempty"`
	// ID tells this lab from another one made later under the same name:
	// `meshctl lab up --record` writes it, and `lab down --recorded`
	// removes a lab only if it is still the one recorded.
	ID string `json:"id,omitempty"`
	// CreatedBy is the user who made the lab (the sudo user, if any), so
	// `lab down --all` can say whose labs it would remove.
	CreatedBy string `json:"createdBy,omitempty"`
	// Owns are host paths (state directories, bpffs pins) of what ran in
	// the lab; Down removes them with the namespaces.
	Owns []string `json:"owns,omitempty"`
	// Cuts are the site pairs whose UDP the routers drop (Lab.Cut), so
	// status shows them and heal works from another process.
	Cuts []Cut `json:"cuts,omitempty"`
}

// stateStore is a lab's state file; every change is written at once
// (atomically, by rename) so a crash leaves a file that says what to remove.
type stateStore struct {
	path string
	mu   sync.Mutex
	st   stateFile
}

func statePath(name string) string { return filepath.Join(stateDir, name+".json") }
func logDir(name string) string    { return filepath.Join(stateDir, name) }

// createState claims the lab's name: the state file is created exclusively,
// before any namespace, so a concurrent DownAll never mistakes a lab being
// built for a leftover and two processes never build the same lab.
func createState(spec *Spec, namespaces []string) (*stateStore, error) {
	if err := os.MkdirAll(stateDir, 0o755); err != nil {
		return nil, fmt.Errorf("creating the lab state directory: %w", err)
	}
	self, err := selfRef()
	if err != nil {
		return nil, err
	}
	s := &stateStore{path: statePath(spec.Name), st: stateFile{
		Version:    stateVersion,
		Name:       spec.Name,
		Spec:       spec,
		Created:    time.Now().UTC().Truncate(time.Second),
		Owner:      &self,
		Namespaces: namespaces,
		ID:         newLabID(),
		CreatedBy:  invokingUser(),
	}}
	f, err := os.OpenFile(s.path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if errors.Is(err, os.ErrExist) {
		return nil, fmt.Errorf("%w: %s (state file %s); remove it with `meshctl lab down %s` or pick another name", ErrExists, spec.Name, s.path, spec.Name)
	}
	if err != nil {
		return nil, fmt.Errorf("creating the lab state file: %w", err)
	}
	data, _ := json.MarshalIndent(&s.st, "", "  ")
	_, err = f.Write(data)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = os.Remove(s.path)
		return nil, fmt.Errorf("writing the lab state file: %w", err)
	}
	if err := os.MkdirAll(logDir(spec.Name), 0o755); err != nil {
		_ = os.Remove(s.path)
		return nil, fmt.Errorf("creating the lab output directory: %w", err)
	}
	return s, nil
}

func readState(name string) (*stateStore, error) {
	if len(name) > maxLabName || !labNameRE.MatchString(name) {
		// Never a path: a name from a record file or the command line
		// must not lead outside the state directory.
		return nil, fmt.Errorf("%w: %q is not a lab name (lower-case letters and digits, starting with a letter)", ErrNotFound, name)
	}
	path := statePath(name)
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w: %q (no state file %s)", ErrNotFound, name, path)
	}
	if err != nil {
		return nil, fmt.Errorf("reading lab state: %w", err)
	}
	s := &stateStore{path: path}
	if err := json.Unmarshal(data, &s.st); err != nil {
		return nil, fmt.Errorf("%w: %s (%v): remove the lab with `meshctl lab down %s`", ErrDamaged, path, err, name)
	}
	if s.st.Version != stateVersion || s.st.Spec == nil || s.st.Name != name {
		return nil, fmt.Errorf("%w: %s is not a version %d state of lab %s: remove the lab with `meshctl lab down %s`", ErrDamaged, path, stateVersion, name, name)
	}
	return s, nil
}

// update applies fn to the state and writes it.
func (s *stateStore) update(fn func(*stateFile)) error {
	return s.change(func(st *stateFile) (bool, error) { fn(st); return true, nil })
}

// change applies fn to the lab's current state and writes the result, or
// nothing when fn reports no change or fails. Several processes may hold
// the same lab (a test that started agents, `meshctl lab cut` from a
// shell): change holds the lab's lock and starts from the file, not from
// this handle's copy, so no process overwrites what another recorded.
func (s *stateStore) change(fn func(*stateFile) (bool, error)) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	unlock, err := lockLab(s.st.Name)
	if err != nil {
		return err
	}
	defer unlock()
	if err := s.reload(); err != nil {
		return err
	}
	changed, err := fn(&s.st)
	if err != nil || !changed {
		return err
	}
	data, err := json.MarshalIndent(&s.st, "", "  ")
	if err != nil {
		return err
	}
	tmp := s.path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return fmt.Errorf("writing lab state: %w", err)
	}
	if err := os.Rename(tmp, s.path); err != nil {
		return fmt.Errorf("writing lab state: %w", err)
	}
	return nil
}

// lockLab takes the lab's lock: an exclusive flock on its output
// directory, which lives exactly as long as the state file (the file
// itself is replaced by rename on every write, so it cannot carry a lock).
func lockLab(name string) (func(), error) {
	f, err := os.Open(logDir(name))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s was removed (no directory %s)", ErrNotFound, name, logDir(name))
	}
	if err != nil {
		return nil, fmt.Errorf("locking the state of lab %s: %w", name, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("locking the state of lab %s: %w", name, err)
	}
	return func() { f.Close() }, nil
}

// reload replaces the copy in memory with the file, which another process
// may have changed. s.mu is held. A file that is gone or belongs to
// another lab of the same name is an error; one that does not parse is
// overwritten by the copy in memory, as before changes were merged.
func (s *stateStore) reload() error {
	data, err := os.ReadFile(s.path)
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("%w: %s was removed (no state file %s)", ErrNotFound, s.st.Name, s.path)
	}
	if err != nil {
		return fmt.Errorf("reading lab state: %w", err)
	}
	var disk stateFile
	if json.Unmarshal(data, &disk) != nil || disk.Spec == nil {
		return nil
	}
	if disk.ID != s.st.ID {
		return fmt.Errorf("%w: %s was removed and made again (id %s, this handle's is %s): load it again", ErrNotFound, s.st.Name, disk.ID, s.st.ID)
	}
	s.st = disk
	return nil
}

// refresh is reload for readers: a state that cannot be reloaded (the lab
// is being removed) leaves the copy in memory as it was.
func (s *stateStore) refresh() {
	s.mu.Lock()
	defer s.mu.Unlock()
	_ = s.reload()
}

func (s *stateStore) snapshot() stateFile {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.st
	st.Processes = append([]procRecord(nil), s.st.Processes...)
	st.Namespaces = append([]string(nil), s.st.Namespaces...)
	st.Cuts = append([]Cut(nil), s.st.Cuts...)
	return st
}

func (s *stateStore) remove(name string) error {
	if err := os.RemoveAll(logDir(name)); err != nil {
		return fmt.Errorf("removing lab output: %w", err)
	}
	if err := os.Remove(s.path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("removing lab state: %w", err)
	}
	return nil
}

// Names lists the labs that have a state file, sorted.
func Names() ([]string, error) {
	entries, err := os.ReadDir(stateDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("listing labs: %w", err)
	}
	var names []string
	for _, e := range entries {
		if n, ok := strings.CutSuffix(e.Name(), ".json"); ok && !e.IsDir() {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	return names, nil
}

// Load opens a lab made by Up in this or another process (for example a
// lab left running by `meshctl lab up`).
func Load(name string) (*Lab, error) {
	s, err := readState(name)
	if err != nil {
		return nil, err
	}
	if err := s.st.Spec.Validate(); err != nil {
		return nil, fmt.Errorf("lab state file %s holds an invalid spec (%v): remove the lab with `meshctl lab down --all --yes`", s.path, err)
	}
	l := layout(s.st.Spec, nil)
	l.state = s
	for _, r := range s.st.Processes {
		l.procs = append(l.procs, &Process{
			Pid: r.Pid, Name: r.Name, Netns: r.Netns, Args: r.Args, LogPath: r.Log,
			start: r.Start, lab: l,
		})
	}
	return l, nil
}

// Detach hands the lab over to nobody: it stays up after the creating
// process exits, and `meshctl lab down --all` removes it like a leftover.
// `meshctl lab up` detaches; tests keep ownership so that DownAll, run by
// another process, leaves their labs alone while they run.
func (l *Lab) Detach() error {
	return l.state.update(func(st *stateFile) { st.Owner = nil })
}

// newLabID is 8 random bytes in hex.
func newLabID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// invokingUser is the user behind the command: the one who ran sudo, else
// the current one.
func invokingUser() string {
	if u := os.Getenv("SUDO_USER"); u != "" {
		return u
	}
	if u, err := user.Current(); err == nil {
		return u.Username
	}
	return fmt.Sprintf("uid %d", os.Getuid())
}

// ID identifies this lab among labs of the same name made at other times.
func (l *Lab) ID() string { return l.state.snapshot().ID }

// ownRoots are where a lab may own paths: run-time and temporary
// directories and the bpf filesystem. Down removes owned paths as root,
// so a path anywhere else (a typo, a home directory) is refused.
var ownRoots = []string{"/run/", "/tmp/", "/var/tmp/", "/sys/fs/bpf/"}

// CheckOwnedPath refuses a path Down should not remove (see Own).
func CheckOwnedPath(p string) error { return checkOwnedPath(p) }

func checkOwnedPath(p string) error {
	if !filepath.IsAbs(p) || filepath.Clean(p) != p {
		return fmt.Errorf("%q is not a clean absolute path", p)
	}
	for _, root := range ownRoots {
		if rest, ok := strings.CutPrefix(p, root); ok && rest != "" {
			if strings.HasPrefix(p, stateDir+"/") || p == stateDir {
				break
			}
			// One level below a root-owned directory, so no parent can be
			// swapped for a symlink by another user of /tmp, and named
			// weft-*, so nothing shared (/run/netns, /run/wireguard, the
			// host agent's /run/weft or /sys/fs/bpf/weft) qualifies.
			if strings.Contains(rest, "/") || !strings.HasPrefix(rest, "weft-") {
				return fmt.Errorf("%q: a lab owns only a weft-* entry directly in %s", p, strings.Join(ownRoots, ", "))
			}
			return nil
		}
	}
	return fmt.Errorf("%q is not below %s: a lab owns only run-time, temporary and bpffs paths", p, strings.Join(ownRoots, ", "))
}

// Own records host paths that belong to what runs in the lab (agents'
// state directories, bpffs pins): Down removes them with the namespaces.
func (l *Lab) Own(paths ...string) error {
	for _, p := range paths {
		if err := checkOwnedPath(p); err != nil {
			return fmt.Errorf("lab: owning %w", err)
		}
	}
	return l.state.update(func(st *stateFile) {
		for _, p := range paths {
			if !slices.Contains(st.Owns, p) {
				st.Owns = append(st.Owns, p)
			}
		}
	})
}

// Status is what `meshctl lab status` shows of a lab.
type Status struct {
	Name      string        `json:"name"`
	ID        string        `json:"id,omitempty"`
	CreatedBy string        `json:"createdBy,omitempty"`
	Owns      []string      `json:"owns,omitempty"`
	Created   time.Time     `json:"created"`
	Complete  bool          `json:"complete"`            // Up finished
	OwnerPid  int           `json:"ownerPid,omitempty"`  // the process holding the lab; 0 once detached
	InUse     bool          `json:"inUse"`               // the owner is still running, so DownAll skips the lab
	Missing   []string      `json:"missing,omitempty"`   // namespaces that should exist and do not
	Internet  string        `json:"internet"`            // the internet namespace
	Routers   []*Router     `json:"routers"`             //
	Nodes     []*Node       `json:"nodes"`               //
	Workloads []*Workload   `json:"workloads,omitempty"` //
	Processes []ProcessInfo `json:"processes,omitempty"`
	Cuts      []Cut         `json:"cuts,omitempty"` // site pairs whose UDP is dropped (lab cut)
}

// ProcessInfo describes a process started in the lab.
type ProcessInfo struct {
	Name    string   `json:"name"`
	Netns   string   `json:"netns"`
	Pid     int      `json:"pid"`
	Running bool     `json:"running"`
	Args    []string `json:"args"`
	Log     string   `json:"log"`
}

// Status reports the lab as recorded and as found on the machine.
func (l *Lab) Status() Status {
	l.state.refresh()
	st := l.state.snapshot()
	s := Status{
		Name:      l.Name(),
		ID:        st.ID,
		CreatedBy: st.CreatedBy,
		Owns:      st.Owns,
		Created:   st.Created,
		Complete:  st.Complete,
		Internet:  l.internet,
		Routers:   l.Routers(),
		Nodes:     l.Nodes(),
		Workloads: l.Workloads(),
		Cuts:      st.Cuts,
	}
	if st.Owner != nil {
		s.OwnerPid = st.Owner.Pid
		s.InUse = st.Owner.alive()
	}
	for _, ns := range l.netns {
		if !netnsExists(ns) {
			s.Missing = append(s.Missing, ns)
		}
	}
	for _, p := range st.Processes {
		s.Processes = append(s.Processes, ProcessInfo{
			Name: p.Name, Netns: p.Netns, Pid: p.Pid, Running: p.procRef.alive(), Args: p.Args, Log: p.Log,
		})
	}
	return s
}
