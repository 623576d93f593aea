package bpf

import (
	"errors"
	"fmt"
	"maps"
	"sync"

	"github.com/cilium/ebpf"
)

// Programs loaded before anything else; the others (the workload and
// underlay programs) load in the background, and AttachWorkload and
// AttachUnderlay wait for them.
var hostPrograms = []string{"weft_from_dev", "weft_to_dev"}

// loadObjects loads spec into d.objs: first its maps (repl's maps take the
// place of their namesakes), then the host-device programs side by side;
// the workload programs follow in the background, d.progsLoaded is closed
// when they are in d.objs (d.progsErr says if they failed).
//
// The kernel verifies each program on its own and verification is most of
// the load (about 3 ms per program on a 2-vCPU machine since the shared code
// is in global functions, about 80 ms before; the maps take about 7 ms), and
// it lies on the critical path of a node joining the mesh: loading side by
// side takes the time of the slowest program when there are CPUs enough,
// and a node needs its workload programs only when it has workloads. The programs share the one set of maps, .rodata and .bss
// included, exactly as a single collection's programs would.
func (d *Datapath) loadObjects(spec *ebpf.CollectionSpec, repl map[string]*ebpf.Map) error {
	mapsOnly := spec.Copy()
	mapsOnly.Programs = nil
	coll, err := ebpf.NewCollectionWithOptions(mapsOnly, ebpf.CollectionOptions{MapReplacements: repl})
	if err != nil {
		return err
	}
	var rest []string
	for name := range spec.Programs {
		if !contains(hostPrograms, name) {
			rest = append(rest, name)
		}
	}
	progs, err := loadPrograms(spec, hostPrograms, coll.Maps)
	if err != nil {
		coll.Close()
		return err
	}
	// The background loads need every map as a replacement, also those
	// d.objs takes over below; Close waits for them before closing d.objs.
	shared := maps.Clone(coll.Maps)
	if err := coll.Assign(&d.objs.datapathMaps); err != nil {
		closePrograms(progs)
		coll.Close()
		return err
	}
	d.objs.WeftFromDev, d.objs.WeftToDev = progs["weft_from_dev"], progs["weft_to_dev"]
	d.progsLoaded = make(chan struct{})
	go func() {
		defer close(d.progsLoaded)
		defer coll.Close() // .rodata and .bss: the programs hold their own references
		progs, err := loadPrograms(spec, rest, shared)
		if err != nil {
			d.progsErr = loadError(fmt.Errorf("workload programs: %w", err))
			return
		}
		d.objs.WeftFromWl, d.objs.WeftToWl = progs["weft_from_wl"], progs["weft_to_wl"]
		d.objs.WeftFromUnderlay, d.objs.WeftFromUnderlay3 = progs["weft_from_underlay"], progs["weft_from_underlay3"]
	}()
	return nil
}

// loadPrograms loads the named programs of spec concurrently, each with
// maps in place of the spec's maps.
func loadPrograms(spec *ebpf.CollectionSpec, names []string, maps map[string]*ebpf.Map) (map[string]*ebpf.Program, error) {
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		errs  []error
		progs = make(map[string]*ebpf.Program, len(names))
	)
	for _, name := range names {
		if _, ok := spec.Programs[name]; !ok {
			return nil, fmt.Errorf("embedded object has no program %q", name)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			one := spec.Copy()
			for n := range one.Programs {
				if n != name {
					delete(one.Programs, n)
				}
			}
			c, err := ebpf.NewCollectionWithOptions(one, ebpf.CollectionOptions{MapReplacements: maps})
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, fmt.Errorf("program %s: %w", name, err))
				return
			}
			progs[name] = c.DetachProgram(name)
			c.Close() // its clones of the shared maps
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		closePrograms(progs)
		return nil, err
	}
	return progs, nil
}

func closePrograms(progs map[string]*ebpf.Program) {
	for _, p := range progs {
		p.Close()
	}
}

func contains(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

// workloadPrograms waits until the workload programs are loaded.
func (d *Datapath) workloadPrograms() error {
	if d.progsLoaded == nil {
		return nil
	}
	<-d.progsLoaded
	return d.progsErr
}
