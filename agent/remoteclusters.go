package agent

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/weftmesh/weft/identity"
	"github.com/weftmesh/weft/identity/allocator"
	"github.com/weftmesh/weft/kvstore"
	"github.com/weftmesh/weft/kvstore/mirror"
)

// Remote clusters on every agent (docs/clusters.md). The agent's node,
// endpoint and remote-identity caches are multi-source: the local etcd is
// their first member, and each connected cluster adds one member per kind,
// read from the local etcd's mirror of it (mirror mode) or from the remote
// etcd itself (direct mode). A member's records must be its cluster's own
// (kvstore.AcceptRemote) and lie in the ranges it was connected with; the
// local member comes first, so a remote cluster can never replace a local
// record. Disconnecting removes the members, whose entries leave the
// datapath as deletes.

// localMember is the name of the local etcd's member of each cache.
const localMember = "local"

func remoteMember(cluster string) string { return "cluster:" + cluster }

// view is a multi-source cache with the change counter the reconcilers
// that rebuild on change compare (Revision; revisions of several etcds do
// not compare, a count of changes does).
type view[T any] struct {
	*kvstore.MultiCache[T]
	gen atomic.Int64
}

// Revision counts the changes the view has delivered.
func (v *view[T]) Revision() int64 { return v.gen.Load() }

// newView makes a view whose events go to onEvent.
func newView[T any](name string, decode func(string, []byte) (T, error), onEvent func(kvstore.Event[T]), log *slog.Logger) (*view[T], error) {
	v := &view[T]{}
	mc, err := kvstore.NewMultiCache(kvstore.MultiCacheConfig[T]{
		Name: name, Decode: decode, Logger: log,
		OnEvent: func(ev kvstore.Event[T]) {
			v.gen.Add(1)
			if onEvent != nil {
				onEvent(ev)
			}
		},
	})
	if err != nil {
		return nil, err
	}
	v.MultiCache = mc
	return v, nil
}

// decodeRemoteIdentity decodes an identities/id/ record as the allocator
// holds it.
func decodeRemoteIdentity(key string, data []byte) (allocator.Identity, error) {
	rec, err := kvstore.IdentityDecoder(key, data)
	if err != nil {
		return allocator.Identity{}, err
	}
	l, err := identity.ParseLabels(rec.Labels, "")
	if err != nil {
		return allocator.Identity{}, fmt.Errorf("%w: identity %d: %w", kvstore.ErrInvalidRecord, rec.ID, err)
	}
	return allocator.Identity{ID: identity.NumericIdentity(rec.ID), Labels: l}, nil
}

// inRanges reports whether p lies inside one of the cluster's ranges.
func inRanges(c kvstore.Cluster, p netip.Prefix) bool {
	for _, r := range append([]netip.Prefix{c.MeshPool}, c.PodCIDRs...) {
		if r.Bits() <= p.Bits() && r.Contains(p.Addr()) {
			return true
		}
	}
	return false
}

// remoteClusters follows remoteclusters/ and keeps one member per kind for
// each connected cluster.
type remoteClusters struct {
	a     *Agent
	log   *slog.Logger
	views *kvstore.Cache[kvstore.RemoteClusterView]

	mu     sync.Mutex
	active map[string]*remoteCluster
	ctx    context.Context
}

type remoteCluster struct {
	view   kvstore.RemoteClusterView
	client *kvstore.Client // direct mode only
}

func (a *Agent) startRemoteClusters(ctx context.Context) error {
	rc := &remoteClusters{a: a, log: a.log.With("component", "remote-clusters"), active: map[string]*remoteCluster{}, ctx: ctx}
	var err error
	rc.views, err = kvstore.NewCache(a.cp.kv.Source(), kvstore.CacheConfig[kvstore.RemoteClusterView]{
		Name: "remote clusters", Prefix: kvstore.RemoteClustersPrefix, Decode: kvstore.RemoteClusterViewDecoder,
		OnEvent: rc.event, Logger: a.log,
	})
	if err != nil {
		return err
	}
	a.remotes = rc
	a.goRun("remote cluster cache", rc.views.Run)
	if a.cp.files.CAKeyFile != "" {
		if err := a.startMirrors(ctx); err != nil {
			return err
		}
	}
	return nil
}

// event runs on the cache's goroutine; members are added and removed here
// (never from the views' own OnEvent).
func (rc *remoteClusters) event(ev kvstore.Event[kvstore.RemoteClusterView]) {
	switch ev.Kind {
	case kvstore.EventAdd:
		rc.connect(ev.Value)
	case kvstore.EventUpdate:
		rc.disconnect(ev.Old.Name)
		rc.connect(ev.Value)
	case kvstore.EventDelete:
		rc.disconnect(ev.Old.Name)
	}
}

func (rc *remoteClusters) connect(v kvstore.RemoteClusterView) {
	a := rc.a
	if v.Name == a.cfg.Cluster {
		rc.log.Error("a remote cluster has this cluster's name; ignored", "cluster", v.Name)
		return
	}
	log := rc.log.With("cluster", v.Name, "mode", v.Mode)
	src := a.cp.kv.Source()
	prefix := func(p string) string { return kvstore.MirrorPrefix(v.Name) + strings.TrimPrefix(p, kvstore.Prefix) }
	keyMap := kvstore.MirrorKeyMap(v.Name)
	probe := time.Duration(-1) // the local etcd: the agent's own health check covers it
	var client *kvstore.Client
	if v.Mode == kvstore.ModeDirect {
		var err error
		client, err = kvstore.NewRemoteClient(rc.ctx, kvstore.RemoteAccess{
			Endpoints: v.Direct.EtcdEndpoints, CAPEM: []byte(v.Direct.CACert), CertPEM: []byte(v.Direct.Cert), KeyPEM: []byte(v.Direct.Key), Logger: log,
		})
		if err != nil {
			log.Error("cannot make a client of the remote etcd; its records stay out", "err", err)
			return
		}
		src, prefix, keyMap, probe = client.Source(), func(p string) string { return p }, nil, 0
	}
	cl := v.Cluster()
	name := remoteMember(v.Name)
	accept := kvstore.AcceptRemote[kvstore.Node](v.Name, v.ID)
	errs := []error{
		a.nodes.Add(rc.ctx, kvstore.MemberConfig[kvstore.Node]{
			Name: name, Source: src, Prefix: prefix(kvstore.NodesPrefix + v.Name + "/"), KeyMap: keyMap, ProbeInterval: probe,
			Accept: func(key string, n kvstore.Node) error {
				if err := accept(key, n); err != nil {
					return err
				}
				for _, p := range nodePrefixes(n) {
					if !inRanges(cl, p) {
						return fmt.Errorf("%w: node %s/%s claims %s, outside cluster %s's ranges", kvstore.ErrRefused, n.Cluster, n.Name, p, v.Name)
					}
				}
				return nil
			},
		}),
		a.endpoints.Add(rc.ctx, kvstore.MemberConfig[kvstore.Endpoint]{
			Name: name, Source: src, Prefix: prefix(kvstore.EndpointsPrefix + v.Name + "/"), KeyMap: keyMap, ProbeInterval: probe,
			Accept: func(key string, e kvstore.Endpoint) error {
				if err := kvstore.CheckRemote(v.Name, v.ID, key, e); err != nil {
					return err
				}
				if !inRanges(cl, netip.PrefixFrom(e.IP, e.IP.BitLen())) {
					return fmt.Errorf("%w: endpoint %s is outside cluster %s's ranges", kvstore.ErrRefused, e.IP, v.Name)
				}
				return nil
			},
		}),
		a.remoteGrants.Add(rc.ctx, kvstore.MemberConfig[kvstore.Grant]{
			Name: name, Source: src, Prefix: prefix(kvstore.GrantsPrefix + v.Name + "/"), KeyMap: keyMap, ProbeInterval: probe,
			Accept: kvstore.AcceptRemote[kvstore.Grant](v.Name, v.ID),
		}),
		a.remoteIDs.Add(rc.ctx, kvstore.MemberConfig[allocator.Identity]{
			Name: name, Source: src, Prefix: prefix(kvstore.IdentityIDPrefix), KeyMap: keyMap, ProbeInterval: probe,
			Accept: func(key string, id allocator.Identity) error {
				if err := kvstore.CheckRemote(v.Name, v.ID, key, id); err != nil {
					return err
				}
				// Its labels must name it too: a cluster's number for another
				// cluster's label set would let it speak for that cluster.
				if c, ok := id.Labels.Get(identity.SourceMesh + ":cluster"); !ok || c != v.Name {
					return fmt.Errorf("%w: identity %d of cluster %s has labels %s, not mesh:cluster=%s", kvstore.ErrRefused, id.ID, v.Name, id.Labels, v.Name)
				}
				return nil
			},
		}),
	}
	for _, err := range errs {
		if err != nil {
			log.Error("adding a remote cluster's cache member", "err", err)
		}
	}
	rc.mu.Lock()
	rc.active[v.Name] = &remoteCluster{view: v, client: client}
	rc.mu.Unlock()
	log.Info("remote cluster added", "id", v.ID, "mesh_pool", v.MeshPool)
}

func (rc *remoteClusters) disconnect(name string) {
	rc.mu.Lock()
	r, ok := rc.active[name]
	delete(rc.active, name)
	rc.mu.Unlock()
	if !ok {
		return
	}
	a := rc.a
	m := remoteMember(name)
	// Nodes last: endpoints and identities leave first, then the peers
	// and routes, none of them retained (a disconnect is not an outage).
	a.endpoints.Remove(m)
	a.remoteIDs.Remove(m)
	a.remoteGrants.Remove(m)
	if a.peers != nil {
		a.peers.dropCluster(name)
	}
	a.nodes.Remove(m)
	if a.peers != nil {
		a.peers.dropCluster(name)
		a.peers.trigger()
	}
	if r.client != nil {
		_ = r.client.Close()
	}
	rc.log.Info("remote cluster removed", "cluster", name)
}

// state is what the members of cluster name report, and in mirror mode
// what its mirror wrote.
func (rc *remoteClusters) state(name string) (remoteState, bool) {
	rc.mu.Lock()
	r, ok := rc.active[name]
	rc.mu.Unlock()
	if !ok {
		return remoteState{}, false
	}
	a := rc.a
	st := remoteState{Connected: true, Synced: true}
	m := remoteMember(name)
	take := func(ms []kvstore.MemberStatus, count *int) {
		for _, s := range ms {
			if s.Name != m {
				continue
			}
			*count = s.Entries
			st.Synced = st.Synced && s.Synced
			st.Connected = st.Connected && s.Connected
			st.Refused += s.Refused
			if s.LastError != "" && s.LastErrorAt.After(st.LastErrorAt) {
				st.LastError, st.LastErrorAt = s.LastError, s.LastErrorAt
			}
		}
	}
	take(a.nodes.Status(), &st.Nodes)
	take(a.endpoints.Status(), &st.Endpoints)
	take(a.remoteIDs.Status(), &st.Identities)
	if r.view.Mode != kvstore.ModeDirect { // a mirror's status: ours, or the pushing cluster's
		ctx, cancel := context.WithTimeout(rc.ctx, 2*time.Second)
		defer cancel()
		ms, err := a.cp.kv.GetMirrorStatus(ctx, name)
		now := time.Now()
		switch {
		case err != nil:
			st.Connected, st.Synced = false, false
			st.LastError, st.LastErrorAt = "mirror: "+err.Error(), now
		default:
			st.Connected = ms.Connected && !ms.Stale(now)
			st.Synced = st.Synced && ms.Synced
			st.Refused += int(ms.Refused)
			st.UpdatedAt = ms.Updated
			if ms.LastError != "" && ms.LastErrorAt.After(st.LastErrorAt) {
				st.LastError, st.LastErrorAt = ms.LastError, ms.LastErrorAt
			}
			if ms.Stale(now) {
				st.Lag = now.Sub(ms.Updated)
				st.LastError = fmt.Sprintf("the mirror has not written its status for %s (is this cluster's first node running?)", st.Lag.Round(time.Second))
			}
		}
	}
	return st, true
}

// startMirrors runs, on the seed, one mirror per connection in mirror mode.
func (a *Agent) startMirrors(ctx context.Context) error {
	ms := &mirrors{a: a, ctx: ctx, running: map[string]*runningMirror{}, log: a.log.With("component", "mirror")}
	conns, err := kvstore.NewCache(a.cp.kv.Source(), kvstore.CacheConfig[kvstore.RemoteCluster]{
		Name: "cluster connections", Prefix: kvstore.ClusterMeshPrefix, Decode: kvstore.RemoteClusterDecoder,
		OnEvent: ms.event, Logger: a.log,
	})
	if err != nil {
		return err
	}
	a.goRun("cluster connection cache", conns.Run)
	return nil
}

type mirrors struct {
	a       *Agent
	ctx     context.Context
	log     *slog.Logger
	running map[string]*runningMirror // the cache's goroutine only
}

type runningMirror struct {
	cancel context.CancelFunc
	done   chan struct{}
}

func (ms *mirrors) event(ev kvstore.Event[kvstore.RemoteCluster]) {
	if ev.Kind != kvstore.EventAdd {
		ms.stop(ev.Old.Name)
		ms.stopPush(ev.Old.Name)
	}
	if ev.Kind == kvstore.EventDelete {
		return
	}
	if ev.Value.Mode == kvstore.ModeMirror {
		ms.start(ev.Value)
	}
	if ev.Value.Push {
		ms.startPush(ev.Value)
	}
}

// pushKey names the pushing mirror of a connection in running.
func pushKey(cluster string) string { return cluster + "/push" }

// startPush runs, for a connection whose other side cannot reach this
// cluster's etcd, a mirror of this cluster's own records into the other
// cluster's etcd (under mirror/<this cluster>/, all its credential may
// write there).
func (ms *mirrors) startPush(r kvstore.RemoteCluster) {
	a := ms.a
	log := ms.log.With("cluster", r.Name, "push", true)
	self, err := a.cp.kv.GetCluster(ms.ctx, a.cfg.Cluster)
	if err != nil {
		log.Error("reading this cluster's record; not pushing", "err", err)
		return
	}
	client, err := kvstore.NewRemoteClient(ms.ctx, kvstore.RemoteAccess{
		Endpoints: r.EtcdEndpoints, CAPEM: []byte(r.CACert), CertPEM: []byte(r.Cert), KeyPEM: []byte(r.Key), Logger: log,
	})
	if err != nil {
		log.Error("cannot make a client of the remote etcd; not pushing", "err", err)
		return
	}
	m, err := mirror.New(mirror.Config{Cluster: self.Name, ClusterID: self.ID, Remote: a.cp.kv.Source(), Local: client.KV(), Logger: log})
	if err != nil {
		_ = client.Close()
		log.Error("cannot start the pushing mirror", "err", err)
		return
	}
	ms.run(pushKey(r.Name), m, client, log)
	log.Info("pushing this cluster's records", "etcd", r.EtcdEndpoints)
}

// stopPush ends the pushing mirror of a connection; what it wrote goes
// with the other side's record of the connection.
func (ms *mirrors) stopPush(cluster string) {
	if rm, ok := ms.running[pushKey(cluster)]; ok {
		delete(ms.running, pushKey(cluster))
		rm.cancel()
		<-rm.done
	}
}

// run starts m under key until stopped.
func (ms *mirrors) run(key string, m *mirror.Mirror, client *kvstore.Client, log *slog.Logger) {
	ctx, cancel := context.WithCancel(ms.ctx)
	rm := &runningMirror{cancel: cancel, done: make(chan struct{})}
	ms.running[key] = rm
	go func() {
		defer close(rm.done)
		defer client.Close()
		if err := m.Run(ctx); err != nil && ctx.Err() == nil {
			log.Error("mirror stopped", "err", err)
		}
	}()
}

func (ms *mirrors) start(r kvstore.RemoteCluster) {
	log := ms.log.With("cluster", r.Name)
	client, err := kvstore.NewRemoteClient(ms.ctx, kvstore.RemoteAccess{
		Endpoints: r.EtcdEndpoints, CAPEM: []byte(r.CACert), CertPEM: []byte(r.Cert), KeyPEM: []byte(r.Key), Logger: log,
	})
	if err != nil {
		log.Error("cannot make a client of the remote etcd; no mirror", "err", err)
		return
	}
	m, err := mirror.New(mirror.Config{Cluster: r.Name, ClusterID: r.ID, Remote: client.Source(), Local: ms.a.cp.kv.KV(), Logger: log})
	if err != nil {
		_ = client.Close()
		log.Error("cannot start the mirror", "err", err)
		return
	}
	ms.run(r.Name, m, client, log)
	log.Info("mirror started", "etcd", r.EtcdEndpoints)
}

// stop ends cluster's mirror and removes what it may have written after
// the connection went (its record and mirror were deleted together).
func (ms *mirrors) stop(cluster string) {
	rm, ok := ms.running[cluster]
	if !ok {
		return
	}
	delete(ms.running, cluster)
	rm.cancel()
	<-rm.done
	if _, err := ms.a.cp.kv.GetRemoteCluster(ms.ctx, cluster); err == nil {
		return // reconnected meanwhile: its new mirror owns the prefix
	}
	if err := ms.a.cp.kv.DeleteMirror(ms.ctx, cluster); err != nil {
		ms.log.Warn("removing a disconnected cluster's mirror", "cluster", cluster, "err", err)
	}
}

// identityLabels looks id up among the local identities, then among the
// connected clusters'.
func (a *Agent) identityLabels(id identity.NumericIdentity) (identity.Labels, bool) {
	if l, ok := a.alloc.LookupByID(id); ok {
		return l, true
	}
	if a.remoteIDs == nil {
		return nil, false
	}
	v, ok := a.remoteIDs.Get(kvstore.IdentityIDKey(uint32(id)))
	return v.Labels, ok
}

// localView is a view restricted to what the local etcd provides: the
// nodes that share this etcd's policies, CA and gossip key (probes,
// gossip, agent-to-agent calls and policy apply --wait stay inside it).
type localView[T any] struct{ v *view[T] }

// Local is v restricted to the local member.
func (v *view[T]) Local() localView[T] { return localView[T]{v} }

func (l localView[T]) Get(key string) (T, bool) {
	if owner, ok := l.v.Owner(key); !ok || owner != localMember {
		var zero T
		return zero, false
	}
	return l.v.Get(key)
}

func (l localView[T]) Range(f func(key string, v T) bool) { l.v.RangeMember(localMember, f) }

func (l localView[T]) Revision() int64 { return l.v.Revision() }

func (l localView[T]) Len() int {
	n := 0
	l.v.RangeMember(localMember, func(string, T) bool { n++; return true })
	return n
}

// identityLookup answers LookupByID from the local and the connected
// clusters' identities (flows name both).
type identityLookup struct{ a *Agent }

func (l identityLookup) LookupByID(id identity.NumericIdentity) (identity.Labels, bool) {
	return l.a.identityLabels(id)
}

// isRemote reports whether cluster is a connected (remote) cluster.
func (rc *remoteClusters) isRemote(cluster string) bool {
	if rc == nil {
		return false
	}
	rc.mu.Lock()
	defer rc.mu.Unlock()
	_, ok := rc.active[cluster]
	return ok
}

// allowsEndpoint judges an endpoint record by its node's label grant: the
// local etcd's for this etcd's nodes, the mirrored (or remote) one for a
// connected cluster's. A node without a grant (a seed) may publish any.
func (a *Agent) allowsEndpoint(cluster, node string, labels []string) error {
	if !a.remotes.isRemote(cluster) {
		return a.cp.grants.Allows(cluster, node, labels)
	}
	if kvstore.ValidateName("cluster", cluster) != nil || kvstore.ValidateName("node", node) != nil {
		return fmt.Errorf("%q/%q is not a node name", cluster, node)
	}
	g, ok := a.remoteGrants.Get(kvstore.GrantKey(cluster, node))
	if !ok {
		return nil
	}
	return g.AllowsEndpoint(labels)
}
