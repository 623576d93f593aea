package plugin

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"
)

// fakeLinks is the host namespace's links by name.
type fakeLinks map[string]Link

func (f fakeLinks) Link(name string) (Link, error) {
	l, ok := f[name]
	if !ok {
		return Link{}, fmt.Errorf("%w: %s", ErrNoLink, name)
	}
	return l, nil
}

// The results below are what the bridge and ptp plugins (1.x) print.
const (
	bridgeResult = `{"cniVersion":"1.0.0","interfaces":[
		{"name":"cni0","mac":"6e:4a:01:02:03:04"},
		{"name":"veth1c2d3e4f","mac":"7a:11:22:33:44:55"},
		{"name":"eth0","mac":"0a:58:64:40:00:05","sandbox":"/var/run/netns/cni-0a1b"}],
		"ips":[{"interface":2,"address":"100.64.0.5/24","gateway":"100.64.0.1"}],
		"routes":[{"dst":"0.0.0.0/0","gw":"100.64.0.1"}]}`
	ptpResult = `{"cniVersion":"1.0.0","interfaces":[
		{"name":"vethd00df00d","mac":"5e:11:22:33:44:55"},
		{"name":"eth0","mac":"0a:58:64:41:00:09","sandbox":"/var/run/netns/cni-0a1b"}],
		"ips":[{"interface":1,"address":"100.65.0.9/24","gateway":"100.65.0.1"}],
		"routes":[{"dst":"0.0.0.0/0","gw":"100.65.0.1"}]}`
)

func prevResult(t *testing.T, cniVersion, result string) types.Result {
	t.Helper()
	r, err := version.NewResult(cniVersion, []byte(result))
	if err != nil {
		t.Fatal(err)
	}
	return r
}

var hostLinks = fakeLinks{
	"cni0":         {Kind: "bridge"},
	"veth1c2d3e4f": {Kind: "veth"},
	"vethd00df00d": {Kind: "veth"},
	"dummy0":       {Kind: "dummy"},
	"eth0":         {Kind: "device"}, // the node's own eth0: not the pod's
}

func TestChainedInputBridgeAndPtp(t *testing.T) {
	for _, tc := range []struct {
		name, result, wantIface, wantIP string
	}{
		{"bridge", bridgeResult, "veth1c2d3e4f", "100.64.0.5"},
		{"ptp", ptpResult, "vethd00df00d", "100.65.0.9"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ChainedInput(prevResult(t, "1.0.0", tc.result), "eth0", hostLinks, tc.name)
			if err != nil {
				t.Fatal(err)
			}
			if got.HostIface != tc.wantIface || got.IP != netip.MustParseAddr(tc.wantIP) {
				t.Errorf("ChainedInput = %+v, want %s and %s", got, tc.wantIface, tc.wantIP)
			}
		})
	}
}

// A 0.4.0 result (a conflist of that version) reads the same.
func TestChainedInput040(t *testing.T) {
	r := prevResult(t, "0.4.0", `{"cniVersion":"0.4.0","interfaces":[{"name":"cni0"},{"name":"veth1c2d3e4f"},{"name":"eth0","sandbox":"/var/run/netns/x"}],
		"ips":[{"version":"4","interface":2,"address":"100.64.0.5/24","gateway":"100.64.0.1"}]}`)
	got, err := ChainedInput(r, "eth0", hostLinks, "")
	if err != nil || got.HostIface != "veth1c2d3e4f" || got.IP != netip.MustParseAddr("100.64.0.5") {
		t.Fatalf("ChainedInput = %+v, %v", got, err)
	}
}

// The address the agent gets is the pod's: not the bridge's gateway
// address on the host side, not another sandbox interface's, and IPv4
// when the pod is dual-stack.
func TestChainedInputPicksThePodsIPv4(t *testing.T) {
	r := prevResult(t, "1.0.0", `{"cniVersion":"1.0.0","interfaces":[
		{"name":"cni0"},{"name":"veth1c2d3e4f"},{"name":"net1","sandbox":"/x"},{"name":"eth0","sandbox":"/x"}],
		"ips":[{"interface":0,"address":"100.64.0.1/24"},
		       {"interface":2,"address":"100.66.0.7/24"},
		       {"interface":3,"address":"fd00::5/64"},
		       {"interface":3,"address":"100.64.0.5/24"}]}`)
	got, err := ChainedInput(r, "eth0", hostLinks, "bridge")
	if err != nil || got.IP != netip.MustParseAddr("100.64.0.5") {
		t.Fatalf("ChainedInput = %+v, %v; want 100.64.0.5 (eth0's IPv4)", got, err)
	}
	// No interface index (some plugins leave it out): the IPv4 address.
	r = prevResult(t, "1.0.0", `{"cniVersion":"1.0.0","interfaces":[{"name":"vethd00df00d"}],"ips":[{"address":"fd00::5/64"},{"address":"100.65.0.9/24"}]}`)
	if got, err := ChainedInput(r, "eth0", hostLinks, "ptp"); err != nil || got.IP != netip.MustParseAddr("100.65.0.9") {
		t.Fatalf("without interface indexes: %+v, %v", got, err)
	}
}

func TestChainedInputErrors(t *testing.T) {
	for _, tc := range []struct {
		name, after, result string
		want                []string
	}{
		{"macvlan: no host interface", "macvlan", `{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"/x"}],"ips":[{"interface":0,"address":"100.64.0.5/24"}]}`,
			[]string{"weft-cni chained after macvlan needs a veth-based plugin (bridge, ptp)", "no host-side interface"}},
		{"only a bridge", "bridge", `{"cniVersion":"1.0.0","interfaces":[{"name":"cni0"},{"name":"eth0","sandbox":"/x"}],"ips":[{"interface":1,"address":"100.64.0.5/24"}]}`,
			[]string{"needs a veth-based plugin (bridge, ptp)", "cni0 (bridge)"}},
		{"host interface not here", "", `{"cniVersion":"1.0.0","interfaces":[{"name":"vethgone"},{"name":"eth0","sandbox":"/x"}],"ips":[{"interface":1,"address":"100.64.0.5/24"}]}`,
			[]string{"weft-cni chained after the plugin before it needs a veth-based plugin", "vethgone (not in this namespace)"}},
		{"two veths", "ptp", `{"cniVersion":"1.0.0","interfaces":[{"name":"veth1c2d3e4f"},{"name":"vethd00df00d"},{"name":"eth0","sandbox":"/x"}],"ips":[{"interface":2,"address":"100.64.0.5/24"}]}`,
			[]string{"several host-side veths (veth1c2d3e4f, vethd00df00d)"}},
		{"IPv6 only", "ptp", `{"cniVersion":"1.0.0","interfaces":[{"name":"vethd00df00d"},{"name":"eth0","sandbox":"/x"}],"ips":[{"interface":1,"address":"fd00::5/64"}]}`,
			[]string{"weft-cni chained after ptp needs a plugin that gives the pod an IPv4 address", "ips: fd00::5"}},
		{"no ips", "ptp", `{"cniVersion":"1.0.0","interfaces":[{"name":"vethd00df00d"}]}`,
			[]string{"prevResult has no ips"}},
		{"an address of the host side only", "bridge", `{"cniVersion":"1.0.0","interfaces":[{"name":"cni0"},{"name":"veth1c2d3e4f"}],"ips":[{"interface":0,"address":"100.64.0.1/24"}]}`,
			[]string{"no IPv4 address of the pod's interface"}},
		{"interface index out of range", "ptp", `{"cniVersion":"1.0.0","interfaces":[{"name":"vethd00df00d"}],"ips":[{"interface":7,"address":"100.64.0.5/24"}]}`,
			[]string{"no IPv4 address"}},
		{"bad interface name", "ptp", `{"cniVersion":"1.0.0","interfaces":[{"name":"../../x"},{"name":"eth0","sandbox":"/x"}],"ips":[{"interface":1,"address":"100.64.0.5/24"}]}`,
			[]string{`host interface "../../x"`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ChainedInput(prevResult(t, "1.0.0", tc.result), "eth0", hostLinks, tc.after)
			if err == nil {
				t.Fatal("ChainedInput accepted it")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
		})
	}
}
