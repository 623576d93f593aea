package plugin

import (
	"bytes"
	"encoding/json"
	"net/netip"
	"strings"
	"testing"

	"github.com/weftmesh/weft/agent/api"
)

var agentAnswer = api.CNIResult{
	IP:        netip.MustParseAddr("100.64.3.17"),
	Gateway:   netip.MustParseAddr("100.64.3.1"),
	HostIface: "weftc0ffee",
	PodMAC:    "0a:58:64:40:03:11",
	Identity:  300,
	MTU:       1420,
}

// The result a runtime reads, in each version weft-cni speaks: what is
// printed is decoded as plain JSON, the way the runtime's libcni does.
func TestPrimaryResultVersions(t *testing.T) {
	for _, v := range SupportedVersions {
		t.Run(v, func(t *testing.T) {
			r, err := PrimaryResult(agentAnswer, "eth0", "/var/run/netns/cni-1", "aa:bb:cc:dd:ee:ff")
			if err != nil {
				t.Fatal(err)
			}
			var out bytes.Buffer
			if err := PrintResult(&out, r, v); err != nil {
				t.Fatal(err)
			}
			var got struct {
				CNIVersion string `json:"cniVersion"`
				Interfaces []struct {
					Name, Mac, Sandbox string
					Mtu                int
				} `json:"interfaces"`
				IPs []struct {
					Version   string `json:"version"`
					Address   string `json:"address"`
					Gateway   string `json:"gateway"`
					Interface *int   `json:"interface"`
				} `json:"ips"`
				Routes []struct{ Dst, GW string } `json:"routes"`
			}
			if err := json.Unmarshal(out.Bytes(), &got); err != nil {
				t.Fatalf("%v\n%s", err, out.String())
			}
			if got.CNIVersion != v {
				t.Errorf("cniVersion %q, want %q", got.CNIVersion, v)
			}
			if len(got.Interfaces) != 2 || got.Interfaces[0].Name != "weftc0ffee" || got.Interfaces[0].Sandbox != "" || got.Interfaces[0].Mac != "aa:bb:cc:dd:ee:ff" ||
				got.Interfaces[1].Name != "eth0" || got.Interfaces[1].Sandbox != "/var/run/netns/cni-1" || got.Interfaces[1].Mac != "0a:58:64:40:03:11" {
				t.Errorf("interfaces %+v, want the host veth without a sandbox, then eth0 in /var/run/netns/cni-1 with the pod's MAC", got.Interfaces)
			}
			if len(got.IPs) != 1 || got.IPs[0].Address != "100.64.3.17/32" || got.IPs[0].Gateway != "100.64.3.1" || got.IPs[0].Interface == nil || *got.IPs[0].Interface != 1 {
				t.Errorf("ips %s, want 100.64.3.17/32 via 100.64.3.1 on interface 1", out.String())
			}
			wantVersion := "" // 1.0.0 dropped ips[].version
			if v == "0.4.0" {
				wantVersion = "4"
			}
			if len(got.IPs) == 1 && got.IPs[0].Version != wantVersion {
				t.Errorf("ips[0].version %q, want %q for CNI %s", got.IPs[0].Version, wantVersion, v)
			}
			if len(got.Routes) != 1 || got.Routes[0].Dst != "0.0.0.0/0" || got.Routes[0].GW != "100.64.3.1" {
				t.Errorf("routes %+v, want the default route via 100.64.3.1", got.Routes)
			}
			// The MTU is a field of the 1.x result types (libcni keeps it
			// for 1.0.0 too); 0.4.0 has no place for it.
			if mtu := got.Interfaces[1].Mtu; (v != "0.4.0") != (mtu == 1420) {
				t.Errorf("CNI %s: mtu %d", v, mtu)
			}
		})
	}
}

func TestPrimaryResultIPv6(t *testing.T) {
	a := agentAnswer
	a.IP, a.Gateway = netip.MustParseAddr("fd00:64::17"), netip.MustParseAddr("fe80::1")
	r, err := PrimaryResult(a, "eth0", "/run/netns/p", "")
	if err != nil {
		t.Fatal(err)
	}
	if got := r.IPs[0].Address.String(); got != "fd00:64::17/128" {
		t.Errorf("address %s", got)
	}
	if got := r.Routes[0].Dst.String(); got != "::/0" {
		t.Errorf("default route %s", got)
	}
}

func TestPrimaryResultRefusesBadAnswers(t *testing.T) {
	for _, tc := range []struct {
		name string
		edit func(*api.CNIResult)
		err  string
	}{
		{"no address", func(r *api.CNIResult) { r.IP = netip.Addr{} }, "without the pod's address"},
		{"no gateway", func(r *api.CNIResult) { r.Gateway = netip.Addr{} }, "without a gateway"},
		{"gateway of the other family", func(r *api.CNIResult) { r.Gateway = netip.MustParseAddr("fe80::1") }, "gateway of the pod's address family"},
		{"bad host interface", func(r *api.CNIResult) { r.HostIface = "veth/../x" }, "host interface"},
		{"bad MAC", func(r *api.CNIResult) { r.PodMAC = "zz" }, "pod MAC"},
		{"bad MTU", func(r *api.CNIResult) { r.MTU = 1 << 20 }, "MTU"},
	} {
		a := agentAnswer
		tc.edit(&a)
		if _, err := PrimaryResult(a, "eth0", "/run/netns/p", ""); err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("%s: PrimaryResult = %v, want an error with %q", tc.name, err, tc.err)
		}
	}
}
