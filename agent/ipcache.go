package agent

import (
	"log/slog"
	"net/netip"

	"github.com/weftmesh/weft/kvstore"
)

// ipcacheWriter is the part of the datapath the ipcache reconciler needs.
type ipcacheWriter interface {
	UpsertIPCache(prefix netip.Prefix, identity uint32, flags uint32) error
	DeleteIPCache(prefix netip.Prefix) error
}

// ipcacheReconciler mirrors every endpoint of the mesh into the datapath's
// ipcache (address -> identity), one map write per event. Cryptokey routing
// makes these source addresses trustworthy: a packet from the tunnel with a
// source inside a node's prefixes was sent by that node's key.
type ipcacheReconciler struct {
	dp  ipcacheWriter
	log *slog.Logger
}

func newIPCacheReconciler(dp ipcacheWriter, log *slog.Logger) *ipcacheReconciler {
	return &ipcacheReconciler{dp: dp, log: log}
}

func (r *ipcacheReconciler) event(ev kvstore.Event[kvstore.Endpoint]) {
	switch ev.Kind {
	case kvstore.EventAdd, kvstore.EventUpdate:
		if ev.Kind == kvstore.EventUpdate && ev.Old.IP != ev.Value.IP {
			r.remove(ev.Old.IP)
		}
		pfx := netip.PrefixFrom(ev.Value.IP, ev.Value.IP.BitLen())
		if err := r.dp.UpsertIPCache(pfx, ev.Value.Identity, 0); err != nil {
			r.log.Error("ipcache upsert", "prefix", pfx, "identity", ev.Value.Identity, "err", err)
		}
	case kvstore.EventDelete:
		r.remove(ev.Old.IP)
	}
}

func (r *ipcacheReconciler) remove(ip netip.Addr) {
	if !ip.IsValid() {
		return
	}
	pfx := netip.PrefixFrom(ip, ip.BitLen())
	if err := r.dp.DeleteIPCache(pfx); err != nil {
		r.log.Error("ipcache delete", "prefix", pfx, "err", err)
	}
}
