package bpf

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

const bpffsMagic = 0xcafe4a11

// ensureBPFFS makes sure root lies on a bpf filesystem. Like Cilium, it
// mounts one at /sys/fs/bpf when nothing is mounted there yet.
func ensureBPFFS(root string) error {
	const mountpoint = "/sys/fs/bpf"
	probe := root
	for {
		if _, err := os.Stat(probe); err == nil {
			break
		}
		parent := filepath.Dir(probe)
		if parent == probe {
			break
		}
		probe = parent
	}
	var st unix.Statfs_t
	if err := unix.Statfs(probe, &st); err != nil {
		return fmt.Errorf("bpf: checking the filesystem of %s: %w", probe, err)
	}
	if st.Type == bpffsMagic {
		return nil
	}
	if root != mountpoint && !strings.HasPrefix(root, mountpoint+"/") {
		return fmt.Errorf("bpf: pin root %s is not on a bpf filesystem: mount one (mount -t bpf bpf DIR) or use %s", root, DefaultPinRoot)
	}
	if err := os.MkdirAll(mountpoint, 0o755); err != nil {
		return fmt.Errorf("bpf: creating %s: %w", mountpoint, err)
	}
	if err := unix.Mount("bpffs", mountpoint, "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("bpf: mounting bpffs at %s (needed to pin the datapath's maps): %w", mountpoint, err)
	}
	return nil
}

// openPinnedMaps returns, for every map of spec, the pinned map of that
// name in dir, creating and pinning missing ones. A pinned map that differs
// only in size is migrated: a new map of the configured size takes over its
// entries and its pin. Any other difference is refused.
func openPinnedMaps(spec *ebpf.CollectionSpec, dir string, log *slog.Logger) (map[string]*ebpf.Map, error) {
	if err := checkLayout(dir); err != nil {
		return nil, err
	}
	maps := map[string]*ebpf.Map{}
	fail := func(err error) (map[string]*ebpf.Map, error) {
		for _, m := range maps {
			m.Close()
		}
		return nil, err
	}
	for name, ms := range spec.Maps {
		if strings.HasPrefix(name, ".") {
			continue // .rodata/.bss: per program load, never shared
		}
		path := filepath.Join(dir, name)
		m, err := ebpf.LoadPinnedMap(path, nil)
		switch {
		case errors.Is(err, os.ErrNotExist):
			m, err = ebpf.NewMap(ms)
			if err != nil {
				return fail(fmt.Errorf("bpf: creating map %s: %w", name, err))
			}
			if err := m.Pin(path); err != nil {
				m.Close()
				return fail(fmt.Errorf("bpf: pinning map %s: %w", name, err))
			}
		case err != nil:
			return fail(fmt.Errorf("bpf: opening pinned map %s: %w", path, err))
		default:
			m, err = reconcileMap(name, ms, m, path, log)
			if err != nil {
				return fail(err)
			}
		}
		maps[name] = m
	}
	if err := writeLayout(dir); err != nil {
		return fail(err)
	}
	return maps, nil
}

// reconcileMap checks a pinned map against its spec, migrating a resize.
func reconcileMap(name string, ms *ebpf.MapSpec, old *ebpf.Map, path string, log *slog.Logger) (*ebpf.Map, error) {
	if ms.Compatible(old) == nil {
		return old, nil
	}
	info, err := old.Info()
	if err != nil {
		old.Close()
		return nil, fmt.Errorf("bpf: inspecting pinned map %s: %w", path, err)
	}
	if info.Type != ms.Type || info.KeySize != ms.KeySize || info.ValueSize != ms.ValueSize || info.Flags != ms.Flags {
		old.Close()
		return nil, fmt.Errorf("%w: %s is %v key %dB value %dB flags %#x, this datapath needs %v key %dB value %dB flags %#x; "+
			"remove the scope's pins (the agent's datapath reset) and restart: established connections will be re-judged",
			ErrIncompatiblePins, path, info.Type, info.KeySize, info.ValueSize, info.Flags, ms.Type, ms.KeySize, ms.ValueSize, ms.Flags)
	}
	// Only the size differs: copy what fits into a map of the new size.
	defer old.Close()
	nm, err := ebpf.NewMap(ms)
	if err != nil {
		return nil, fmt.Errorf("bpf: creating resized map %s: %w", name, err)
	}
	copied, skipped := 0, 0
	if ms.Type != ebpf.RingBuf && ms.Type != ebpf.PerCPUArray {
		key := make([]byte, ms.KeySize)
		val := make([]byte, ms.ValueSize)
		it := old.Iterate()
		for it.Next(&key, &val) {
			if err := nm.Update(key, val, ebpf.UpdateAny); err != nil {
				skipped++
				continue
			}
			copied++
		}
		if err := it.Err(); err != nil {
			nm.Close()
			return nil, fmt.Errorf("bpf: copying map %s for resize: %w", name, err)
		}
	}
	if err := os.Remove(path); err != nil {
		nm.Close()
		return nil, fmt.Errorf("bpf: replacing pin %s: %w", path, err)
	}
	if err := nm.Pin(path); err != nil {
		nm.Close()
		return nil, fmt.Errorf("bpf: pinning resized map %s: %w", name, err)
	}
	log.Info("datapath map resized", "map", name, "from", info.MaxEntries, "to", ms.MaxEntries, "copied", copied, "skipped", skipped)
	return nm, nil
}

// checkLayout refuses pins written by a datapath of another layout version.
func checkLayout(dir string) error {
	m, err := ebpf.LoadPinnedMap(filepath.Join(dir, metaMap), nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("bpf: opening %s: %w", filepath.Join(dir, metaMap), err)
	}
	defer m.Close()
	var v uint32
	if err := m.Lookup(uint32(0), &v); err != nil {
		return fmt.Errorf("bpf: reading the layout version in %s: %w", dir, err)
	}
	if v != layoutVersion {
		return fmt.Errorf("%w: the pins in %s have layout version %d, this datapath uses %d; "+
			"remove the scope's pins (the agent's datapath reset) and restart: established connections will be re-judged",
			ErrIncompatiblePins, dir, v, layoutVersion)
	}
	return nil
}

func writeLayout(dir string) error {
	path := filepath.Join(dir, metaMap)
	m, err := ebpf.LoadPinnedMap(path, nil)
	if errors.Is(err, os.ErrNotExist) {
		m, err = ebpf.NewMap(&ebpf.MapSpec{Name: metaMap, Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1})
		if err == nil {
			err = m.Pin(path)
		}
	}
	if err != nil {
		return fmt.Errorf("bpf: recording the layout version in %s: %w", path, err)
	}
	defer m.Close()
	if err := m.Update(uint32(0), layoutVersion, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("bpf: recording the layout version: %w", err)
	}
	return nil
}
