package bpf

import (
	"errors"
	"fmt"
	"sync"

	"github.com/cilium/ebpf"
)

// loadObjects loads spec into objs: first its maps (repl's maps take the
// place of their namesakes), then every program at the same time. The
// kernel verifies each program on its own and verification is nearly all of
// the load (about 80 ms per program on a 2-vCPU machine against a few ms for
// the maps), so side by side the programs load in the time of the slowest
// one when there are CPUs enough: that time is on the critical path of a
// node joining the mesh. The programs share the one set of maps, .rodata
// and .bss included, exactly as a single collection's programs would.
func loadObjects(spec *ebpf.CollectionSpec, objs *datapathObjects, repl map[string]*ebpf.Map) error {
	mapsOnly := spec.Copy()
	mapsOnly.Programs = nil
	coll, err := ebpf.NewCollectionWithOptions(mapsOnly, ebpf.CollectionOptions{MapReplacements: repl})
	if err != nil {
		return err
	}
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	coll.Programs = make(map[string]*ebpf.Program, len(spec.Programs))
	for name := range spec.Programs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			one := spec.Copy()
			for n := range one.Programs {
				if n != name {
					delete(one.Programs, n)
				}
			}
			c, err := ebpf.NewCollectionWithOptions(one, ebpf.CollectionOptions{MapReplacements: coll.Maps})
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, fmt.Errorf("program %s: %w", name, err))
				return
			}
			coll.Programs[name] = c.DetachProgram(name)
			c.Close() // its clones of the shared maps
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		coll.Close()
		return err
	}
	if err := coll.Assign(objs); err != nil {
		coll.Close()
		return err
	}
	coll.Close() // what objs did not take (.rodata and .bss stay referenced by the programs)
	return nil
}
