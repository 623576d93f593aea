package agent

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/weftmesh/weft/agent/api"
	"github.com/weftmesh/weft/agent/health"
	"github.com/weftmesh/weft/agent/meshtls"
	"github.com/weftmesh/weft/kvstore"
)

// Ping implements api.Pinger: one probe to the target node's probe echo
// (health's, on its mesh address), so it travels through the WireGuard
// peer like workload traffic; an unanswered probe comes back with the
// likeliest reason, read from the tunnel, the health monitor and the
// target's own flow records.
func (a *Agent) Ping(ctx context.Context, req api.PingRequest) (api.PingResult, error) {
	n, err := a.pingTarget(req.Target)
	if err != nil {
		return api.PingResult{}, err
	}
	res := api.PingResult{Node: n.Name, Cluster: n.Cluster, MeshIP: n.MeshIP.String(), Path: "direct"}
	if st, ok := a.peerPath(n.Cluster + "/" + n.Name); ok {
		res.Path, res.PathSince = st.Path.String(), st.Since
	}
	if n.Cluster == a.cfg.Cluster && n.Name == a.cfg.NodeName {
		return api.PingResult{}, api.Errorf(api.CodeInvalid, "%s is this node: ping another node of the mesh (see `meshctl nodes`)", req.Target)
	}
	if !n.MeshIP.IsValid() {
		return api.PingResult{}, api.Errorf(api.CodeUnavailable, "node %s/%s has no mesh address in its record yet: it is still joining", n.Cluster, n.Name)
	}
	ts, err := a.tun.Status()
	if err != nil {
		return api.PingResult{}, api.Errorf(api.CodeUnavailable, "reading the tunnel: %v", err)
	}
	var peerKey string
	found := false
	for _, p := range ts.Peers {
		if p.PublicKey != n.WGPublicKey && (n.WGNextPublicKey == "" || p.PublicKey != n.WGNextPublicKey) {
			continue
		}
		if !found || p.LastHandshake.After(res.LastHandshake) {
			res.Endpoint, res.LastHandshake, peerKey = p.Endpoint, p.LastHandshake, p.PublicKey
		}
		found = true
	}
	o, err := a.observabilityReady()
	if err != nil {
		return api.PingResult{}, err
	}
	timeout := time.Duration(req.Timeout)
	switch {
	case timeout == 0:
		timeout = 2 * time.Second
	case timeout < 0 || timeout > 30*time.Second:
		return api.PingResult{}, api.Errorf(api.CodeInvalid, "ping timeout %s: give one between 1ms and 30s (--timeout)", timeout)
	}
	rtt, err := o.health.Ping(ctx, n.MeshIP, timeout)
	if err == nil {
		res.OK, res.RTT = true, api.Duration(rtt)
		return res, nil
	}
	if errors.Is(err, health.ErrNotRunning) {
		return api.PingResult{}, api.Errorf(api.CodeUnavailable, "the health monitor is starting; try again in a second")
	}
	res.Error = err.Error()
	now := time.Now()
	name := n.Cluster + "/" + n.Name
	switch {
	case !found:
		res.Why = fmt.Sprintf("no route: this node has no WireGuard peer for %s yet (its record is known, the peer is not configured: see this agent's log)", name)
	case res.LastHandshake.IsZero():
		res.Why = fmt.Sprintf("no WireGuard handshake with %s since it was added %s ago: its UDP endpoint %s does not answer — UDP blocked by a firewall on either side, or a NAT in between (docs/troubleshooting.md)",
			name, now.Sub(a.handshakes.addedAt(a, peerKey, now)).Round(time.Second), orUnknown(res.Endpoint))
	case now.Sub(res.LastHandshake) > health.HandshakeStale:
		res.Why = fmt.Sprintf("no WireGuard handshake with %s since %s (%s ago): the peer at %s stopped answering — its agent's tunnel is down, or UDP between the two is now blocked",
			name, res.LastHandshake.UTC().Format(time.RFC3339), now.Sub(res.LastHandshake).Round(time.Second), orUnknown(res.Endpoint))
	default:
		res.Why = o.unansweredWhy(ctx, n, a.meshIP, req.Since, res.LastHandshake)
	}
	return res, nil
}

func orUnknown(s string) string {
	if s == "" {
		return "(unknown yet)"
	}
	return s
}

// pingTarget finds the node a ping names: node, cluster/node, or an IP
// (mesh address, underlay address or inside the node's CIDRs).
func (a *Agent) pingTarget(target string) (kvstore.Node, error) {
	var nodes []kvstore.Node
	a.nodes.Range(func(_ string, n kvstore.Node) bool { nodes = append(nodes, n); return true })
	sort.Slice(nodes, func(i, j int) bool { return nodes[i].Cluster+"/"+nodes[i].Name < nodes[j].Cluster+"/"+nodes[j].Name })
	if ip, err := netip.ParseAddr(target); err == nil {
		ip = ip.Unmap()
		for _, n := range nodes {
			if n.MeshIP == ip {
				return n, nil
			}
			for _, e := range n.Endpoints {
				if e.Addr().Unmap() == ip {
					return n, nil
				}
			}
		}
		for _, n := range nodes {
			for _, c := range n.CIDRs {
				if c.Contains(ip) {
					return n, nil
				}
			}
		}
		return kvstore.Node{}, api.Errorf(api.CodeNotFound, "no route to %s: it is no node's mesh or underlay address and in no node's CIDRs (`meshctl nodes` lists them)", target)
	}
	cluster, name, qualified := strings.Cut(target, "/")
	if !qualified {
		cluster, name = "", target
	}
	var match []kvstore.Node
	for _, n := range nodes {
		if n.Name == name && (cluster == "" || n.Cluster == cluster) {
			match = append(match, n)
		}
	}
	switch len(match) {
	case 1:
		return match[0], nil
	case 0:
		return kvstore.Node{}, api.Errorf(api.CodeNotFound, "no node %q in the mesh (`meshctl nodes` lists them)", target)
	}
	var names []string
	for _, n := range match {
		names = append(names, n.Cluster+"/"+n.Name)
	}
	return kvstore.Node{}, api.Errorf(api.CodeInvalid, "%q names a node in several clusters: write one of %s", target, strings.Join(names, ", "))
}

// unansweredWhy explains a probe lost although the tunnel to n has a
// recent handshake: the target's datapath dropped it (its flow records
// say so), its agent is gone (gossip), or its agent did not answer.
func (o *observability) unansweredWhy(ctx context.Context, n kvstore.Node, self netip.Addr, since, handshake time.Time) string {
	name := n.Cluster + "/" + n.Name
	age := time.Since(handshake)
	hs := fmt.Sprintf("the tunnel to %s is up (handshake %s ago)", name, age.Round(time.Second))
	if age > 2*time.Minute+15*time.Second {
		// A live path renews its session every 2 minutes (REKEY_AFTER_TIME).
		hs = fmt.Sprintf("the tunnel to %s has had no handshake for %s although WireGuard renews it every 2 minutes: the path stopped carrying packets (UDP blocked? a NAT mapping lost?)", name, age.Round(time.Second))
	}
	if drops, err := o.peerDrops(ctx, n, self, since); err == nil && len(drops) > 0 {
		f := drops[len(drops)-1]
		return fmt.Sprintf("%s, and %s's datapath dropped %d of our packets to it: %s (%s; `meshctl observe --node %s --verdict dropped` shows them)",
			hs, name, len(drops), f.Reason, f.Direction, n.Name)
	}
	for _, p := range o.health.View().Probes {
		if p.Cluster == n.Cluster && p.Node == n.Name && (p.Member == health.MemberDead || p.Member == health.MemberLeft) {
			// Gossip cannot tell a stopped agent from a path that stopped
			// carrying packets (UDP blocked, a NAT mapping lost): both
			// silence it, and the handshake stays "recent" for minutes.
			return fmt.Sprintf("%s, but its agent is %s to gossip: either weft-agent is not running there, or the path to it stopped carrying packets (UDP blocked, a NAT mapping lost; the handshake age cannot tell yet: WireGuard renews it only every 2 minutes)", hs, p.Member)
		}
	}
	return fmt.Sprintf("%s, but its agent did not answer the probe: it may be stopped or starting (its datapath recorded no drop of our probes)", hs)
}

// peerDrops reads n's flow records of packets from self to n that its
// datapath dropped since a time, over the agent-to-agent API.
func (o *observability) peerDrops(ctx context.Context, n kvstore.Node, self netip.Addr, since time.Time) ([]api.Flow, error) {
	if o.tr == nil {
		return nil, errors.New("the agent-to-agent API is not available")
	}
	if since.IsZero() {
		since = time.Now().Add(-time.Minute)
	}
	req := api.FlowRequest{Filter: api.FlowFilter{FromIP: self.String(), ToIP: n.MeshIP.String(), Verdict: "dropped"}, Last: -1, Since: since}
	cctx, cancel := context.WithTimeout(ctx, 1500*time.Millisecond)
	defer cancel()
	url := "https://" + net.JoinHostPort(n.MeshIP.String(), strconv.Itoa(meshtls.DefaultPort)) + "/v1/flows?" + req.Query().Encode()
	hr, _ := http.NewRequestWithContext(cctx, http.MethodGet, url, nil)
	resp, err := (&http.Client{Transport: o.tr}).Do(hr)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("the agent answered %s", resp.Status)
	}
	var out []api.Flow
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		var l api.FlowLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			return out, err
		}
		if l.Flow != nil {
			out = append(out, *l.Flow)
		}
	}
	return out, sc.Err()
}
