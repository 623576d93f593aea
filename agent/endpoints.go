package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"

	"github.com/weftmesh/weft/identity"
	"github.com/weftmesh/weft/kvstore"
	"github.com/weftmesh/weft/policy"
)

// identityAllocator hands out mesh-wide numeric identities for label sets
// (the allocator on kvstore).
type identityAllocator interface {
	Allocate(ctx context.Context, labels identity.Labels) (identity.NumericIdentity, error)
	Release(ctx context.Context, id identity.NumericIdentity) error
}

// localPolicy is the policy reconciler as the endpoint manager uses it.
type localPolicy interface {
	addLocal(ctx context.Context, ep localEndpoint) error
	// setLocalPorts sets a local endpoint's named ports (before addLocal).
	setLocalPorts(ctx context.Context, ip netip.Addr, ports []policy.NamedPort) error
	removeLocal(ctx context.Context, ip netip.Addr) error
}

// endpointDatapath is the part of the datapath the endpoint manager clears.
type endpointDatapath interface {
	DeleteEndpoint(addr netip.Addr) error
}

// endpointManager makes a local address a mesh endpoint, whatever brought
// it (the node itself, a network namespace, a Kubernetes pod): an identity
// for its labels, its policy in the datapath, and a leased endpoint record
// that the rest of the mesh maps to that identity. Sources of workloads
// (netnsSource, later the Kubernetes source) do their plumbing and call it.
type endpointManager struct {
	cluster, node string
	alloc         identityAllocator
	policy        localPolicy
	dp            endpointDatapath
	records       recordWriter
	log           *slog.Logger
}

// endpointSpec is one local endpoint to register.
type endpointSpec struct {
	Name   string
	ID     uint32
	IP     netip.Addr
	Labels identity.Labels
	Host   bool
	// Infra marks a Kubernetes node's own address: host here, published
	// as remote-node (with no labels) for the rest of the mesh; nothing is
	// allocated.
	Infra bool
	// Ports are its named ports (a pod's container ports).
	Ports []policy.NamedPort
}

// add allocates the endpoint's identity, runs plumb (which connects the
// endpoint; nil when there is nothing to connect), writes its policy and
// then its record, in that order: by the time the mesh learns of the
// endpoint, its policy is enforced. On failure the identity is released.
func (m *endpointManager) add(ctx context.Context, spec endpointSpec, plumb func() error) (identity.NumericIdentity, error) {
	if spec.Infra {
		return m.addInfra(ctx, spec)
	}
	id, err := m.alloc.Allocate(ctx, spec.Labels)
	if err != nil {
		return 0, fmt.Errorf("allocating identity for %s: %w", spec.Labels, err)
	}
	if plumb != nil {
		if err := plumb(); err != nil {
			_ = m.alloc.Release(ctx, id)
			return 0, err
		}
	}
	if err := m.policy.setLocalPorts(ctx, spec.IP, spec.Ports); err != nil {
		m.log.Warn("named ports left out", "endpoint", spec.Name, "err", err)
	}
	if err := m.policy.addLocal(ctx, localEndpoint{ID: spec.ID, IP: spec.IP, Identity: id, Labels: spec.Labels, Host: spec.Host}); err != nil {
		_ = m.alloc.Release(ctx, id)
		return 0, err
	}
	rec := kvstore.Endpoint{IP: spec.IP, Identity: uint32(id), Labels: spec.Labels.Strings(), Name: spec.Name, Cluster: m.cluster, Node: m.node, NamedPorts: recordPorts(spec.Ports)}
	if err := m.records.Put(ctx, rec.Key(), &rec); err != nil {
		return id, fmt.Errorf("registering endpoint %s: %w", spec.Name, err)
	}
	return id, nil
}

func recordPorts(ps []policy.NamedPort) []kvstore.NamedPort {
	var out []kvstore.NamedPort
	for _, p := range ps {
		out = append(out, kvstore.NamedPort{Name: p.Name, Protocol: string(p.Protocol), Port: p.Port})
	}
	return out
}

func (m *endpointManager) addInfra(ctx context.Context, spec endpointSpec) (identity.NumericIdentity, error) {
	labels, _ := identity.ReservedLabels(identity.IdentityHost)
	if err := m.policy.addLocal(ctx, localEndpoint{ID: spec.ID, IP: spec.IP, Identity: identity.IdentityHost, Labels: labels, Host: true}); err != nil {
		return 0, err
	}
	rec := kvstore.Endpoint{IP: spec.IP, Identity: uint32(identity.IdentityRemoteNode), Name: spec.Name, Cluster: m.cluster, Node: m.node}
	if err := m.records.Put(ctx, rec.Key(), &rec); err != nil {
		return identity.IdentityHost, fmt.Errorf("registering endpoint %s: %w", spec.Name, err)
	}
	return identity.IdentityHost, nil
}

// remove withdraws the endpoint's record, policy and datapath entry and
// releases its identity; it goes on past failures and reports them all.
func (m *endpointManager) remove(ctx context.Context, ip netip.Addr, id identity.NumericIdentity) error {
	var errs []error
	rec := kvstore.Endpoint{IP: ip, Cluster: m.cluster, Node: m.node}
	errs = append(errs, m.records.Delete(ctx, rec.Key()))
	errs = append(errs, m.policy.removeLocal(ctx, ip))
	errs = append(errs, m.dp.DeleteEndpoint(ip))
	if id != 0 {
		errs = append(errs, m.alloc.Release(ctx, id))
	}
	return errors.Join(errs...)
}
