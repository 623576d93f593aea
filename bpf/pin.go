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
//
// Pins of an older layout version that layoutMigrations knows are
// migrated map by map; pins of any other version are refused.
func openPinnedMaps(spec *ebpf.CollectionSpec, dir string, log *slog.Logger) (map[string]*ebpf.Map, error) {
	from, err := checkLayout(dir)
	if err != nil {
		return nil, err
	}
	migrations := layoutMigrations[from]
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
			if convert := migrations[name]; convert != nil {
				m, err = migrateMap(name, ms, m, path, convert, log)
			} else {
				m, err = reconcileMap(name, ms, m, path, log)
			}
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

// layoutMigrations: for a pinned layout version older than layoutVersion,
// the maps whose values changed and how to convert one value. The others
// are kept as they are (new maps are created).
var layoutMigrations = map[uint32]map[string]func(old []byte, newSize int) ([]byte, error){
	// Version 2 appended the veth's ifindex to the endpoint value. The
	// migrated entries have none (0): AttachWorkload binds each workload's
	// addresses before its new programs replace the old ones, and the
	// agent rewrites every endpoint at start; the old programs keep the
	// old map until they are replaced, so no endpoint is ever missing.
	1: {"endpoints": appendZeros(12)},
}

// appendZeros converts a value of size old by padding it with zeros.
func appendZeros(old int) func([]byte, int) ([]byte, error) {
	return func(v []byte, newSize int) ([]byte, error) {
		if len(v) != old || newSize < old {
			return nil, fmt.Errorf("value of %d bytes, the migration expects %d", len(v), old)
		}
		return append(v[:old:old], make([]byte, newSize-old)...), nil
	}
}

// migrateMap replaces a pinned map of an older layout with one of the
// spec's, converting every entry; a pinned map that already has the new
// layout (a migration cut short) is only reconciled.
func migrateMap(name string, ms *ebpf.MapSpec, old *ebpf.Map, path string,
	convert func([]byte, int) ([]byte, error), log *slog.Logger) (*ebpf.Map, error) {
	if ms.Compatible(old) == nil || old.ValueSize() == ms.ValueSize {
		return reconcileMap(name, ms, old, path, log)
	}
	defer old.Close()
	if old.Type() != ms.Type || old.KeySize() != ms.KeySize {
		return nil, fmt.Errorf("%w: %s is %v key %dB, the migration to layout %d needs %v key %dB; "+
			"remove the scope's pins (the agent's datapath reset) and restart",
			ErrIncompatiblePins, path, old.Type(), old.KeySize(), layoutVersion, ms.Type, ms.KeySize)
	}
	nm, err := ebpf.NewMap(ms)
	if err != nil {
		return nil, fmt.Errorf("bpf: creating map %s for the layout migration: %w", name, err)
	}
	key := make([]byte, old.KeySize())
	val := make([]byte, old.ValueSize())
	copied := 0
	it := old.Iterate()
	for it.Next(&key, &val) {
		nv, err := convert(val, int(ms.ValueSize))
		if err == nil {
			err = nm.Update(key, nv, ebpf.UpdateAny)
		}
		if err != nil {
			nm.Close()
			return nil, fmt.Errorf("bpf: migrating an entry of map %s: %w", name, err)
		}
		copied++
	}
	if err := it.Err(); err != nil {
		nm.Close()
		return nil, fmt.Errorf("bpf: reading map %s for the layout migration: %w", name, err)
	}
	if err := os.Remove(path); err != nil {
		nm.Close()
		return nil, fmt.Errorf("bpf: replacing pin %s: %w", path, err)
	}
	if err := nm.Pin(path); err != nil {
		nm.Close()
		return nil, fmt.Errorf("bpf: pinning migrated map %s: %w", name, err)
	}
	log.Info("datapath map migrated to a new layout", "map", name, "layout", layoutVersion, "entries", copied)
	return nm, nil
}

// checkLayout returns the layout version of the pins in dir (0 when there
// are none) and refuses versions neither current nor migratable.
func checkLayout(dir string) (uint32, error) {
	m, err := ebpf.LoadPinnedMap(filepath.Join(dir, metaMap), nil)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("bpf: opening %s: %w", filepath.Join(dir, metaMap), err)
	}
	defer m.Close()
	var v uint32
	if err := m.Lookup(uint32(0), &v); err != nil {
		return 0, fmt.Errorf("bpf: reading the layout version in %s: %w", dir, err)
	}
	if _, ok := layoutMigrations[v]; v != layoutVersion && !ok {
		return 0, fmt.Errorf("%w: the pins in %s have layout version %d, this datapath uses %d; "+
			"remove the scope's pins (the agent's datapath reset) and restart: established connections will be re-judged",
			ErrIncompatiblePins, dir, v, layoutVersion)
	}
	return v, nil
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
