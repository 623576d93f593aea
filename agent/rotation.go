package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/weftmesh/weft/agent/api"
	"github.com/weftmesh/weft/agent/meshtls"
	"github.com/weftmesh/weft/kvstore"
)

// Bounds of one key rotation (docs/tunnel.md, "Hitless key rotation").
const (
	// rotateConfirmTimeout bounds the wait for every peer to report the
	// announced key. Peers install it on their next node event, well under
	// a second; the margin is for a slow etcd watch or a busy node.
	rotateConfirmTimeout = 20 * time.Second
	// rotateHandshakeTimeout bounds the wait, after the switch, for every
	// peer to complete a handshake with the new key. Any packet to a peer
	// starts one, and the health probes send one every second.
	rotateHandshakeTimeout = 10 * time.Second
	// rotatePoll is how often both waits look again.
	rotatePoll = 100 * time.Millisecond
	// rotateAskTimeout bounds one question to a peer's agent.
	rotateAskTimeout = 2 * time.Second
)

// rotationPeer is one other node during a rotation, with what it did.
type rotationPeer struct {
	node  kvstore.Node
	state api.RotatedPeer
}

// RotateKey implements api.KeyRotator: it replaces the node's WireGuard key
// without interrupting traffic.
//
//  1. Announce: the next key is created and published in the node record
//     as wgNextPublicKey; the device keeps its current key.
//  2. Confirm: every other node's agent is asked over the agent-to-agent
//     API (mTLS, through the tunnel under the current key) until its
//     WireGuard device lists the next key. The confirmation, rather than a
//     fixed grace period, is what makes the switch safe on a slow mesh.
//     Nodes that do not confirm in rotateConfirmTimeout abort the rotation
//     (the announcement is withdrawn, nothing else changed) unless
//     req.Force is set.
//  3. Switch: the device takes the new key (on disk first).
//  4. Follow: wait, bounded by rotateHandshakeTimeout, until every peer has
//     handshaken with the new key, i.e. has moved this node's prefixes to
//     it.
//  5. Retire: the record is rewritten with the new key only; peers drop
//     the old entry.
//
// One rotation runs at a time; a second request is ErrConflict.
func (a *Agent) RotateKey(ctx context.Context, req api.RotateKeyRequest) (api.RotateKeyResult, error) {
	if !a.rotateMu.TryLock() {
		return api.RotateKeyResult{}, api.Errorf(api.CodeConflict, "a key rotation is already running on this node; wait for it to finish")
	}
	defer a.rotateMu.Unlock()
	if a.session == nil || a.tun == nil {
		return api.RotateKeyResult{}, api.Errorf(api.CodeUnavailable, "the agent is still starting; retry in a few seconds")
	}
	start := time.Now()
	old := a.tun.PublicKey().String()
	res := api.RotateKeyResult{OldPublicKey: old}
	nextKey, err := a.tun.PrepareRotation()
	if err != nil {
		return res, api.Errorf(api.CodeInternal, "creating the next WireGuard key: %v", err)
	}
	next := nextKey.String()
	log := a.log.With("component", "rotation", "old_public_key", old, "next_public_key", next)

	// 1. Announce.
	if err := a.publishKeys(ctx, old, next); err != nil {
		return res, api.Errorf(api.CodeUnavailable, "announcing the next key in the node record: %v (nothing changed)", err)
	}
	log.Info("key rotation: next key announced")

	// 2. Confirm.
	peers := a.rotationPeers()
	a.waitInstalled(ctx, peers, next)
	var missing []string
	for _, p := range peers {
		if !p.state.Installed {
			missing = append(missing, fmt.Sprintf("%s/%s (%s)", p.node.Cluster, p.node.Name, p.state.Error))
		}
	}
	if len(missing) > 0 && !req.Force {
		// Withdraw the announcement even when the caller went away: a
		// record that keeps announcing a key holds every peer in fast
		// polling. The prepared key stays on disk for the next attempt.
		wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		werr := a.publishKeys(wctx, old, "")
		log.Warn("key rotation aborted: peers did not confirm the next key", "peers", strings.Join(missing, ", "), "withdraw_err", werr)
		msg := fmt.Sprintf("rotation aborted, the node keeps its key: %d of %d peers did not confirm the next key within %v: %s. "+
			"Retry when they are reachable, or use --force to rotate anyway (they lose traffic to this node until they read its new record)",
			len(missing), len(peers), rotateConfirmTimeout, strings.Join(missing, "; "))
		if werr != nil {
			msg += fmt.Sprintf("; withdrawing the announcement failed too (%v): the next rotation or an agent restart clears it", werr)
		}
		return res, api.Errorf(api.CodeUnavailable, "%s", msg)
	}
	if len(missing) > 0 {
		log.Warn("key rotation forced although peers did not confirm the next key", "peers", strings.Join(missing, ", "))
	}

	// 3. Switch. From here on the rotation is committed: the record must
	// follow even when the caller goes away.
	ctx = context.WithoutCancel(ctx)
	switched := time.Now()
	newKey, err := a.tun.Rotate()
	if err != nil {
		return res, api.Errorf(api.CodeInternal, "switching the device to the new key: %v (the node record still announces it; retry the rotation)", err)
	}
	res.NewPublicKey = newKey.String()
	log.Info("key rotation: switched to the new key")

	// 4. Follow.
	a.waitHandshakes(ctx, peers, switched)

	// 5. Retire.
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		err := a.publishKeys(rctx, res.NewPublicKey, "")
		if err == nil {
			break
		}
		if rctx.Err() != nil {
			return res, api.Errorf(api.CodeUnavailable, "the device uses the new key but the node record could not be updated: %v (the session writes it again when etcd is back; restarting the agent also does)", err)
		}
		log.Warn("key rotation: writing the new key to the node record; retrying", "err", err)
		time.Sleep(time.Second)
	}
	res.Took = api.Duration(time.Since(start))
	res.Peers = make([]api.RotatedPeer, 0, len(peers))
	for _, p := range peers {
		res.Peers = append(res.Peers, p.state)
	}
	log.Info("key rotation done", "public_key", res.NewPublicKey, "took", time.Since(start).Round(time.Millisecond), "peers", len(peers))
	return res, nil
}

// publishKeys rewrites the node record with the given current and next
// keys (next empty: not rotating).
func (a *Agent) publishKeys(ctx context.Context, current, next string) error {
	a.selfMu.Lock()
	defer a.selfMu.Unlock()
	rec := a.self
	rec.WGPublicKey, rec.WGNextPublicKey = current, next
	if err := a.session.Put(ctx, rec.Key(), &rec); err != nil {
		return err
	}
	// Only the key fields: other fields are read without the lock.
	a.self.WGPublicKey, a.self.WGNextPublicKey = current, next
	return nil
}

// rotationPeers lists the other nodes of the mesh, sorted by name.
func (a *Agent) rotationPeers() []*rotationPeer {
	var out []*rotationPeer
	a.nodes.Range(func(_ string, n kvstore.Node) bool {
		if n.Cluster == a.cfg.Cluster && n.Name == a.cfg.NodeName {
			return true
		}
		out = append(out, &rotationPeer{node: n, state: api.RotatedPeer{Node: n.Name, Cluster: n.Cluster}})
		return true
	})
	sort.Slice(out, func(i, j int) bool {
		return out[i].node.Cluster+"/"+out[i].node.Name < out[j].node.Cluster+"/"+out[j].node.Name
	})
	return out
}

// waitInstalled asks every peer's agent, until it confirms or the time is
// up, whether its WireGuard device has an entry for key.
func (a *Agent) waitInstalled(ctx context.Context, peers []*rotationPeer, key string) {
	ctx, cancel := context.WithTimeout(ctx, rotateConfirmTimeout)
	defer cancel()
	var tr http.RoundTripper
	if o := a.obs.Load(); o != nil && o.tr != nil {
		tr = o.tr
	}
	var wg sync.WaitGroup
	for _, p := range peers {
		if tr == nil {
			p.state.Error = "this agent's agent-to-agent API is not running, so peers cannot be asked"
			continue
		}
		if !p.node.MeshIP.IsValid() {
			p.state.Error = "its record has no mesh address to ask it at"
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				has, err := askPeerHasKey(ctx, tr, p.node.MeshIP, key)
				if has {
					p.state.Installed, p.state.Error = true, ""
					return
				}
				if err != nil {
					p.state.Error = err.Error()
				} else {
					p.state.Error = "its device does not list the next key yet"
				}
				select {
				case <-ctx.Done():
					return
				case <-time.After(rotatePoll):
				}
			}
		}()
	}
	wg.Wait()
}

// askPeerHasKey reads a peer agent's WireGuard peers (GET /v1/peers on the
// agent-to-agent API) and reports whether key is among them.
func askPeerHasKey(ctx context.Context, tr http.RoundTripper, meshIP netip.Addr, key string) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, rotateAskTimeout)
	defer cancel()
	url := "https://" + net.JoinHostPort(meshIP.String(), strconv.Itoa(meshtls.DefaultPort)) + "/v1/peers"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return false, err
	}
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return false, fmt.Errorf("no answer from its agent: %v", unwrapURLError(err))
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return false, fmt.Errorf("its agent answered %s", resp.Status)
	}
	var got []api.Peer
	if err := json.NewDecoder(resp.Body).Decode(&got); err != nil {
		return false, fmt.Errorf("decoding its peers: %v", err)
	}
	for _, p := range got {
		if p.PublicKey == key {
			return true, nil
		}
	}
	return false, nil
}

// unwrapURLError drops the method and URL net/http puts in front of the
// cause; the caller names the node.
func unwrapURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// waitHandshakes waits until this node's device reports a handshake after
// since with every peer, or the time is up. A handshake with the new key
// is what makes the peer move this node's prefixes to that key.
func (a *Agent) waitHandshakes(ctx context.Context, peers []*rotationPeer, since time.Time) {
	deadline := time.Now().Add(rotateHandshakeTimeout)
	for {
		st, err := a.tun.Status()
		if err == nil {
			last := map[string]time.Time{}
			for _, p := range st.Peers {
				last[p.PublicKey] = p.LastHandshake
			}
			all := true
			for _, p := range peers {
				p.state.Handshake = last[p.node.WGPublicKey].After(since)
				// A peer that never installed the key (forced rotation)
				// cannot handshake with it; do not wait for it.
				all = all && (p.state.Handshake || !p.state.Installed)
			}
			if all {
				return
			}
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return
		}
		time.Sleep(rotatePoll)
	}
}

// runRotation rotates the key every interval (wireguard.rotateEvery)
// until ctx ends. A failed rotation is logged and tried again at the next
// interval; nothing changed in that case.
func (a *Agent) runRotation(ctx context.Context, every time.Duration) error {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
		res, err := a.RotateKey(ctx, api.RotateKeyRequest{})
		if err != nil {
			a.log.Warn("scheduled key rotation failed; the node keeps its key and tries again later", "err", err, "next_attempt_in", every)
			continue
		}
		a.log.Info("scheduled key rotation done", "public_key", res.NewPublicKey, "took", time.Duration(res.Took).Round(time.Millisecond))
	}
}
