package agent

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// The userspace WireGuard helper must outlive the agent so that traffic
// keeps flowing while the agent restarts. As a DaemonSet pod the agent's
// processes are in the pod's cgroups, and stopping the pod's container
// kills every process in them (the runtime's "kill all" for containers in
// the host PID namespace). escapePodCgroup moves the helper out, into the
// cgroup that holds the kubelet's pods (the parent of "kubepods"), through
// the host's cgroup hierarchies mounted at hostRoot. Outside a pod it does
// nothing.

// escapePodCgroup moves pid out of this process's pod cgroups.
func escapePodCgroup(pid int, hostRoot string) error {
	own, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return err
	}
	mounts, err := cgroupMounts(hostRoot)
	if err != nil {
		return err
	}
	var errs []error
	moved := 0
	for _, line := range strings.Split(strings.TrimSpace(string(own)), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		ctrls, path := parts[1], parts[2]
		i := strings.Index(path, "/kubepods")
		if i < 0 {
			continue // not a pod's cgroup in this hierarchy
		}
		dir, ok := mounts[ctrls]
		if !ok {
			errs = append(errs, fmt.Errorf("hierarchy %q is not mounted under %s", ctrls, hostRoot))
			continue
		}
		target := filepath.Join(dir, path[:i], "cgroup.procs")
		if err := os.WriteFile(target, []byte(strconv.Itoa(pid)), 0o644); err != nil {
			errs = append(errs, fmt.Errorf("moving %d to %s: %w", pid, target, err))
			continue
		}
		moved++
	}
	if moved == 0 && len(errs) == 0 {
		return nil
	}
	return errors.Join(errs...)
}

// cgroupMounts maps the controllers field of /proc/<pid>/cgroup ("cpu,cpuacct",
// "name=systemd", "" for cgroup2) to where that hierarchy is mounted below
// hostRoot, from /proc/self/mountinfo.
func cgroupMounts(hostRoot string) (map[string]string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	out := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// id parent major:minor root mountpoint opts ... - fstype source superopts
		fields := strings.Fields(sc.Text())
		sep := -1
		for i, x := range fields {
			if x == "-" {
				sep = i
				break
			}
		}
		if sep < 0 || sep+3 >= len(fields)+1 || len(fields) < 5 {
			continue
		}
		mp := fields[4]
		if mp != hostRoot && !strings.HasPrefix(mp, hostRoot+"/") {
			continue
		}
		if fields[3] != "/" {
			continue // a bind of a sub-cgroup, not the hierarchy's root
		}
		fstype := fields[sep+1]
		switch fstype {
		case "cgroup2":
			out[""] = mp
		case "cgroup":
			if sep+3 >= len(fields) {
				continue
			}
			var ctrls []string
			for _, o := range strings.Split(fields[sep+3], ",") {
				if o == "rw" || o == "ro" || strings.HasPrefix(o, "release_agent") || o == "clone_children" || o == "noprefix" || o == "xattr" {
					continue
				}
				ctrls = append(ctrls, o)
			}
			out[strings.Join(ctrls, ",")] = mp
		}
	}
	return out, sc.Err()
}
