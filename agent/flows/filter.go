package flows

import (
	"net/netip"
	"strings"

	"github.com/weftmesh/weft/agent/api"
)

// Matcher is a validated api.FlowFilter.
type Matcher struct {
	from, to     []labelMatch
	fromIP, toIP netip.Addr
	port         uint16
	protocol     string
	verdict      string
	cluster      string
}

// labelMatch is key=value with an optional source; without one it matches
// the key from any source, as in a policy selector.
type labelMatch struct {
	source, key, value string
}

// NewMatcher validates f.
func NewMatcher(f api.FlowFilter) (*Matcher, error) {
	if err := f.Validate(); err != nil {
		return nil, api.Errorf(api.CodeInvalid, "%v", err)
	}
	m := &Matcher{port: f.Port, protocol: strings.ToLower(f.Protocol), verdict: f.Verdict, cluster: f.Cluster}
	for _, l := range f.FromLabels {
		m.from = append(m.from, parseLabelMatch(l))
	}
	for _, l := range f.ToLabels {
		m.to = append(m.to, parseLabelMatch(l))
	}
	if f.FromIP != "" {
		m.fromIP = netip.MustParseAddr(f.FromIP)
	}
	if f.ToIP != "" {
		m.toIP = netip.MustParseAddr(f.ToIP)
	}
	return m, nil
}

func parseLabelMatch(s string) labelMatch {
	kv, val, _ := strings.Cut(s, "=")
	lm := labelMatch{key: kv, value: val}
	if src, k, ok := strings.Cut(kv, ":"); ok {
		lm.source, lm.key = src, k
	}
	return lm
}

// matches reports whether canonical labels (source:key=value) hold lm.
func (lm labelMatch) matches(labels []string) bool {
	for _, l := range labels {
		kv, val, ok := strings.Cut(l, "=")
		if !ok || val != lm.value {
			continue
		}
		src, key, ok := strings.Cut(kv, ":")
		if !ok {
			src, key = "", kv
		}
		if key == lm.key && (lm.source == "" || lm.source == src) {
			return true
		}
	}
	return false
}

// Match reports whether f passes every condition of the filter.
func (m *Matcher) Match(f *api.Flow) bool {
	for _, lm := range m.from {
		if !lm.matches(f.Source.Labels) {
			return false
		}
	}
	for _, lm := range m.to {
		if !lm.matches(f.Destination.Labels) {
			return false
		}
	}
	if m.fromIP.IsValid() && !sameIP(m.fromIP, f.Source.IP) {
		return false
	}
	if m.toIP.IsValid() && !sameIP(m.toIP, f.Destination.IP) {
		return false
	}
	if m.port != 0 && f.Source.Port != m.port && f.Destination.Port != m.port {
		return false
	}
	if m.protocol != "" && f.Protocol != m.protocol {
		return false
	}
	if m.verdict != "" && f.Verdict != m.verdict {
		return false
	}
	if m.cluster != "" && !inCluster(f.Source, m.cluster) && !inCluster(f.Destination, m.cluster) {
		return false
	}
	return true
}

// clusterLabel is the label every endpoint (and so its identity) carries.
const clusterLabel = "mesh:cluster="

// inCluster reports whether an end belongs to cluster: its endpoint or
// node is of it, or, for an address the enrichment could only name by its
// identity (a remote workload not in the endpoint cache yet), the
// identity's labels say so.
func inCluster(e api.FlowEndpoint, cluster string) bool {
	if e.Cluster == cluster {
		return true
	}
	for _, l := range e.Labels {
		if strings.HasPrefix(l, clusterLabel) && l[len(clusterLabel):] == cluster {
			return true
		}
	}
	return false
}

func sameIP(want netip.Addr, got string) bool {
	a, err := netip.ParseAddr(got)
	return err == nil && a.Unmap() == want.Unmap()
}
