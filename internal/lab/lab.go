// Package lab builds network-namespace topologies for tests and the demo:
// sites, each a LAN (a bridge) behind a router namespace, an "internet"
// namespace joining the routers, nodes on the LANs (optionally behind NAT)
// and workloads joined to their node by a veth pair.
//
// Everything a lab makes lives inside namespaces named wl-<lab>-...: links
// are created inside them (veth peers are born in their target namespace),
// so the root namespace's interfaces, addresses, routes and firewall are
// never touched and no lab namespace has a route to a real interface. A
// state file under /run/weft-lab records each lab (its spec, its owner and
// the processes started in it) so that later commands find it and DownAll
// removes what a crashed run left behind.
package lab

import (
	"fmt"
	"log/slog"
	"net/netip"
	"sort"
	"sync"
)

// Addressing plan. 198.18.0.0/15 is the benchmarking range: it is never
// routed on a real network, so lab traffic cannot leak by accident.
var (
	internetPrefix = netip.MustParsePrefix("198.19.0.0/24")
	internetAddr   = netip.MustParseAddr("198.19.0.1")
)

// Fixed interface names. They only need to be unique inside one namespace,
// so they are the same in every lab.
const (
	bridgeIface   = "br0"  // the LAN bridge of a router, the bridge of the internet namespace
	wanIface      = "wan0" // a router's link to the internet namespace
	nodeIface     = "eth0" // a node's underlay link; also a workload's link
	workloadIface = "eth0"
	nsPrefix      = "wl-"
)

// Router is a site's router: a namespace holding the site LAN's bridge and a
// link to the internet namespace.
type Router struct {
	Name    string       `json:"name"`
	Site    string       `json:"site"`
	Netns   string       `json:"netns"`
	LAN     netip.Prefix `json:"lan"`     // the site's LAN, e.g. 198.18.1.0/24
	LANAddr netip.Addr   `json:"lanAddr"` // the router on the LAN (.1), the nodes' gateway
	WANAddr netip.Addr   `json:"wanAddr"` // the router on the internet, e.g. 198.19.0.2; NAT'd traffic leaves from here
	NAT     bool         `json:"nat"`     // NATKind is not NATNone
	NATKind NATKind      `json:"natKind"` // none, eim or symmetric
}

// Node is a node namespace on a site's LAN.
type Node struct {
	Name     string     `json:"name"`
	Site     string     `json:"site"`
	Netns    string     `json:"netns"`
	Underlay netip.Addr `json:"underlay"` // the node's address on its LAN (a /24)
	Gateway  netip.Addr `json:"gateway"`  // the site router, the node's default route
	Iface    string     `json:"iface"`    // the underlay link inside Netns
	NAT      bool       `json:"nat"`      // behind its site router's masquerade
	NATKind  NATKind    `json:"natKind"`  // its site's NAT kind: none, eim or symmetric

	routerPort string // the LAN bridge port of this node in the router namespace
}

// Workload is a namespace joined to its node by a veth pair. No addresses
// are assigned: the agent owns workload addressing.
type Workload struct {
	Name      string `json:"name"`
	Node      string `json:"node"`
	Netns     string `json:"netns"`
	HostIface string `json:"hostIface"` // veth end in the node's namespace
	Iface     string `json:"iface"`     // veth end in the workload's namespace
}

// Lab is a running lab. Its methods are safe for concurrent use.
type Lab struct {
	Spec *Spec

	internet  string
	routers   []*Router
	nodes     []*Node
	workloads []*Workload
	netns     []string // every namespace, in creation order

	log   *slog.Logger
	state *stateStore

	mu    sync.Mutex
	procs []*Process
}

// layout computes names and addresses from a validated spec. It is pure,
// so the addressing plan is checked by unit tests.
func layout(spec *Spec, log *slog.Logger) *Lab {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	l := &Lab{Spec: spec, log: log}
	ns := func(entity string) string { return nsPrefix + spec.Name + "-" + entity }
	l.internet = ns(internetName)
	l.netns = append(l.netns, l.internet)
	for i, site := range spec.Sites {
		kind := site.Kind()
		lan := netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, byte(i + 1), 0}), 24)
		r := &Router{
			Name:    RouterName(site.Name),
			Site:    site.Name,
			Netns:   ns(RouterName(site.Name)),
			LAN:     lan,
			LANAddr: netip.AddrFrom4([4]byte{198, 18, byte(i + 1), 1}),
			WANAddr: netip.AddrFrom4([4]byte{198, 19, 0, byte(i + 2)}),
			NAT:     kind != NATNone,
			NATKind: kind,
		}
		l.routers = append(l.routers, r)
		l.netns = append(l.netns, r.Netns)
		for j, n := range site.Nodes {
			node := &Node{
				Name:       n.Name,
				Site:       site.Name,
				Netns:      ns(n.Name),
				Underlay:   netip.AddrFrom4([4]byte{198, 18, byte(i + 1), byte(10 + j)}),
				Gateway:    r.LANAddr,
				Iface:      nodeIface,
				NAT:        kind != NATNone,
				NATKind:    kind,
				routerPort: fmt.Sprintf("lan%d", j),
			}
			l.nodes = append(l.nodes, node)
			l.netns = append(l.netns, node.Netns)
			for k, w := range n.Workloads {
				wl := &Workload{
					Name:      w.Name,
					Node:      n.Name,
					Netns:     ns(w.Name),
					HostIface: fmt.Sprintf("wl%d", k),
					Iface:     workloadIface,
				}
				l.workloads = append(l.workloads, wl)
				l.netns = append(l.netns, wl.Netns)
			}
		}
	}
	return l
}

// Name is the lab's name.
func (l *Lab) Name() string { return l.Spec.Name }

// Internet is the namespace between the site routers (198.19.0.1/24).
func (l *Lab) Internet() string { return l.internet }

// Namespaces lists every namespace of the lab.
func (l *Lab) Namespaces() []string { return append([]string(nil), l.netns...) }

// Node returns the named node, or nil.
func (l *Lab) Node(name string) *Node {
	for _, n := range l.nodes {
		if n.Name == name {
			return n
		}
	}
	return nil
}

// Nodes lists the nodes in spec order.
func (l *Lab) Nodes() []*Node { return append([]*Node(nil), l.nodes...) }

// Workload returns the named workload, or nil.
func (l *Lab) Workload(name string) *Workload {
	for _, w := range l.workloads {
		if w.Name == name {
			return w
		}
	}
	return nil
}

// Workloads lists the workloads in spec order.
func (l *Lab) Workloads() []*Workload { return append([]*Workload(nil), l.workloads...) }

// Router returns the router of the named site, or the router of that name,
// or nil.
func (l *Lab) Router(name string) *Router {
	for _, r := range l.routers {
		if r.Site == name || r.Name == name {
			return r
		}
	}
	return nil
}

// Routers lists the site routers in spec order.
func (l *Lab) Routers() []*Router { return append([]*Router(nil), l.routers...) }

// Resolve maps a node, workload or router name, "internet", or one of the
// lab's namespace names to the namespace name.
func (l *Lab) Resolve(name string) (string, error) {
	for _, ns := range l.netns {
		if ns == name {
			return ns, nil
		}
	}
	if name == internetName {
		return l.internet, nil
	}
	if n := l.Node(name); n != nil {
		return n.Netns, nil
	}
	if w := l.Workload(name); w != nil {
		return w.Netns, nil
	}
	for _, r := range l.routers {
		if r.Name == name {
			return r.Netns, nil
		}
	}
	return "", fmt.Errorf("%w: lab %s has no node, workload or router named %q (known: %s)", ErrUnknownName, l.Name(), name, l.knownNames())
}

func (l *Lab) knownNames() string {
	var names []string
	for _, n := range l.nodes {
		names = append(names, n.Name)
	}
	for _, w := range l.workloads {
		names = append(names, w.Name)
	}
	for _, r := range l.routers {
		names = append(names, r.Name)
	}
	sort.Strings(names)
	names = append(names, internetName)
	s := ""
	for i, n := range names {
		if i == 12 {
			return s + ", ..."
		}
		if i > 0 {
			s += ", "
		}
		s += n
	}
	return s
}
