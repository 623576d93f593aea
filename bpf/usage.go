package bpf

import "github.com/cilium/ebpf"

// MapUsage is how full one datapath map is.
type MapUsage struct {
	Name     string
	Entries  int
	Capacity int
}

// MapUsage counts the keys of the maps whose fill is reported (ipcache,
// endpoints, policy, ct; docs/datapath.md). Walking a full conntrack table
// costs a syscall per entry, so callers should not ask often.
func (d *Datapath) MapUsage() ([]MapUsage, error) {
	maps := []struct {
		name string
		m    *ebpf.Map
	}{{"ipcache", d.objs.Ipcache}, {"endpoints", d.objs.Endpoints}, {"policy", d.objs.Policy}, {"ct", d.objs.Ct}}
	out := make([]MapUsage, 0, len(maps))
	for _, x := range maps {
		capacity := int(x.m.MaxEntries())
		n := 0
		k, err := x.m.NextKeyBytes(nil)
		for err == nil && k != nil && n <= capacity {
			n++
			k, err = x.m.NextKeyBytes(k)
		}
		out = append(out, MapUsage{Name: x.name, Entries: n, Capacity: capacity})
	}
	return out, nil
}
