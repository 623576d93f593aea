package agent

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/weftmesh/weft/agent/api"
	"github.com/weftmesh/weft/internal/names"
)

func TestPodEndpointNameIsAValidMeshName(t *testing.T) {
	for _, tc := range []struct{ ns, pod string }{
		{"x", "a"},
		{"kube-system", "coredns-5d78c9869d-x2l8p"},
		{"a-very-long-namespace-name-that-goes-on", "and-a-very-long-pod-name-that-goes-on-and-on-123"},
	} {
		n := podEndpointName(tc.ns, tc.pod)
		if !names.Valid(n) {
			t.Errorf("podEndpointName(%q, %q) = %q: not a valid name", tc.ns, tc.pod, n)
		}
	}
	if a, b := podEndpointName("ns", strings.Repeat("p", 60)+"1"), podEndpointName("ns", strings.Repeat("p", 60)+"2"); a == b {
		t.Errorf("two long pod names share the endpoint name %q", a)
	}
}

func TestCNIRequestValidation(t *testing.T) {
	good := api.CNIRequest{ContainerID: "3f4c9a", Netns: "/var/run/netns/cni-1", IfName: "eth0", PodNamespace: "x", PodName: "a"}
	if err := validateCNIRequest(good, true); err != nil {
		t.Fatalf("a good ADD refused: %v", err)
	}
	for name, mut := range map[string]func(*api.CNIRequest){
		"no container id":      func(r *api.CNIRequest) { r.ContainerID = "" },
		"container id with /":  func(r *api.CNIRequest) { r.ContainerID = "../x" },
		"relative netns":       func(r *api.CNIRequest) { r.Netns = "cni-1" },
		"unclean netns":        func(r *api.CNIRequest) { r.Netns = "/var/run/netns/../x" },
		"long ifname":          func(r *api.CNIRequest) { r.IfName = "eth0123456789abc" },
		"no pod name":          func(r *api.CNIRequest) { r.PodName = "" },
		"chained without IPv4": func(r *api.CNIRequest) { r.Chained = &api.CNIChained{HostIface: "veth1"} },
		"chained bad iface": func(r *api.CNIRequest) {
			r.Chained = &api.CNIChained{IP: netip.MustParseAddr("100.96.0.2"), HostIface: "a/b"}
		},
	} {
		r := good
		mut(&r)
		if err := validateCNIRequest(r, true); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	// DEL may come without the namespace (it is gone) and without the pod.
	if err := validateCNIRequest(api.CNIRequest{ContainerID: "3f4c9a", IfName: "eth0"}, false); err != nil {
		t.Errorf("a DEL without netns refused: %v", err)
	}
}
