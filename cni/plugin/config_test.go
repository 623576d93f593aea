package plugin

import (
	"strings"
	"testing"
	"time"
)

func TestParseConfig(t *testing.T) {
	for _, tc := range []struct {
		name    string
		conf    string
		socket  string
		timeout time.Duration
		logFile string
		chained bool
		err     string // a part of the error; "" for none
	}{
		{name: "defaults", conf: `{"cniVersion":"1.0.0","name":"weft","type":"weft-cni"}`, socket: DefaultAgentSocket, timeout: DefaultTimeout},
		{name: "every key", conf: `{"cniVersion":"1.1.0","name":"weft","type":"weft-cni","agentSocket":"/run/weft-2/agent.sock","timeout":"2m","logFile":"/var/log/weft-cni.log"}`,
			socket: "/run/weft-2/agent.sock", timeout: 2 * time.Minute, logFile: "/var/log/weft-cni.log"},
		{name: "timeout in seconds", conf: `{"cniVersion":"0.4.0","name":"weft","type":"weft-cni","timeout":90}`, socket: DefaultAgentSocket, timeout: 90 * time.Second},
		{name: "runtime keys ignored", conf: `{"cniVersion":"1.0.0","name":"weft","type":"weft-cni","runtimeConfig":{"portMappings":[]},"capabilities":{"portMappings":true},"args":{"x":1}}`, socket: DefaultAgentSocket, timeout: DefaultTimeout},
		{name: "chained", conf: `{"cniVersion":"1.0.0","name":"weft","type":"weft-cni","prevResult":{"cniVersion":"1.0.0","interfaces":[{"name":"veth1"}],"ips":[{"address":"100.64.0.2/24"}]}}`,
			socket: DefaultAgentSocket, timeout: DefaultTimeout, chained: true},
		{name: "chained 0.4.0 prevResult", conf: `{"cniVersion":"0.4.0","name":"weft","type":"weft-cni","prevResult":{"interfaces":[{"name":"veth1"}],"ips":[{"version":"4","address":"100.64.0.2/24"}]}}`,
			socket: DefaultAgentSocket, timeout: DefaultTimeout, chained: true},

		{name: "not JSON", conf: `{"cniVersion":`, err: "decoding the network configuration"},
		{name: "other plugin", conf: `{"cniVersion":"1.0.0","name":"weft","type":"bridge"}`, err: `type is "bridge"`},
		{name: "old version", conf: `{"cniVersion":"0.3.1","name":"weft","type":"weft-cni"}`, err: `cniVersion "0.3.1" is not one weft-cni supports (0.4.0, 1.0.0, 1.1.0)`},
		{name: "no version", conf: `{"name":"weft","type":"weft-cni"}`, err: `cniVersion ""`},
		{name: "bad name", conf: `{"cniVersion":"1.0.0","name":"we ft","type":"weft-cni"}`, err: `name "we ft"`},
		{name: "relative socket", conf: `{"cniVersion":"1.0.0","name":"weft","agentSocket":"run/agent.sock"}`, err: "agentSocket \"run/agent.sock\" is not an absolute, clean path"},
		{name: "empty socket", conf: `{"cniVersion":"1.0.0","name":"weft","agentSocket":""}`, err: "agentSocket is empty"},
		{name: "socket too long", conf: `{"cniVersion":"1.0.0","name":"weft","agentSocket":"/` + strings.Repeat("a", 120) + `"}`, err: "more than 107"},
		{name: "timeout not a duration", conf: `{"cniVersion":"1.0.0","name":"weft","timeout":"soon"}`, err: `timeout "soon" is not a duration`},
		{name: "timeout too long", conf: `{"cniVersion":"1.0.0","name":"weft","timeout":"10m"}`, err: "not between 1s and 5m0s"},
		{name: "timeout too short", conf: `{"cniVersion":"1.0.0","name":"weft","timeout":0.5}`, err: "not between 1s and 5m0s"},
		{name: "timeout negative", conf: `{"cniVersion":"1.0.0","name":"weft","timeout":-3}`, err: "not between"},
		{name: "timeout a list", conf: `{"cniVersion":"1.0.0","name":"weft","timeout":[1]}`, err: "write a duration"},
		{name: "relative log", conf: `{"cniVersion":"1.0.0","name":"weft","logFile":"weft.log"}`, err: "logFile \"weft.log\" is not an absolute"},
		{name: "bad prevResult", conf: `{"cniVersion":"1.0.0","name":"weft","prevResult":{"cniVersion":"1.0.0","ips":[{"address":"nonsense"}]}}`, err: "prevResult"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := ParseConfig([]byte(tc.conf))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("ParseConfig = %v, want an error with %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.AgentSocket != tc.socket || c.Timeout != tc.timeout || c.LogFile != tc.logFile || c.Chained() != tc.chained {
				t.Errorf("got socket %q timeout %v logFile %q chained %v, want %q %v %q %v", c.AgentSocket, c.Timeout, c.LogFile, c.Chained(), tc.socket, tc.timeout, tc.logFile, tc.chained)
			}
		})
	}
}

func TestParseArgs(t *testing.T) {
	kubelet := "IgnoreUnknown=1;K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=coredns-5d78c9869d-x2l8p;K8S_POD_INFRA_CONTAINER_ID=3f4c;K8S_POD_UID=7d1b3a4e-5c6f-4a8b-9c0d-1e2f3a4b5c6d"
	p, err := ParseArgs(kubelet)
	if err != nil {
		t.Fatal(err)
	}
	if p != (PodArgs{Namespace: "kube-system", Name: "coredns-5d78c9869d-x2l8p", UID: "7d1b3a4e-5c6f-4a8b-9c0d-1e2f3a4b5c6d"}) {
		t.Errorf("ParseArgs(kubelet's) = %+v", p)
	}
	if err := p.Require(); err != nil {
		t.Errorf("Require: %v", err)
	}
	if p, err := ParseArgs("K8S_POD_NAMESPACE=default;K8S_POD_NAME=web.v1"); err != nil || p.Name != "web.v1" {
		t.Errorf("without IgnoreUnknown, known keys only: %+v, %v", p, err)
	}

	none, err := ParseArgs("")
	if err != nil {
		t.Fatal(err)
	}
	if err := none.Require(); err == nil || !strings.Contains(err.Error(), "the runtime must pass K8S_POD_NAMESPACE, K8S_POD_NAME") {
		t.Errorf("Require without a pod = %v, want it to say the runtime must pass K8S_POD_*", err)
	}
	if onlyNS, _ := ParseArgs("K8S_POD_NAMESPACE=default"); onlyNS.Require() == nil {
		t.Error("Require passes a pod without a name")
	}

	for _, tc := range []struct{ args, err string }{
		{"K8S_POD_NAMESPACE=default;FOO=bar", `unknown args ["FOO=bar"]`},
		{"K8S_POD_NAMESPACE=default;K8S_POD_NAME", "invalid pair"},
		{"K8S_POD_NAME=a=b", "invalid pair"},
		{"IgnoreUnknown=maybe", "IgnoreUnknown"},
		{"K8S_POD_NAMESPACE=Kube_System", "K8S_POD_NAMESPACE \"Kube_System\" is not a Kubernetes namespace name"},
		{"K8S_POD_NAMESPACE=" + strings.Repeat("a", 64), "not a Kubernetes namespace name"},
		{"K8S_POD_NAME=../../etc", "K8S_POD_NAME \"../../etc\" is not a Kubernetes pod name"},
		{"K8S_POD_NAME=web pod", "not a Kubernetes pod name"},
		{"K8S_POD_UID=7d1b 3a4e", "K8S_POD_UID"},
		{"K8S_POD_UID=" + strings.Repeat("a", 129), "K8S_POD_UID"},
		{strings.Repeat("K8S_POD_NAME=a;", 1000), "more than"},
	} {
		if _, err := ParseArgs(tc.args); err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("ParseArgs(%.60q) = %v, want an error with %q", tc.args, err, tc.err)
		}
	}
}

func TestValidateCall(t *testing.T) {
	ok := []struct{ id, ifName, netns string }{
		{"3f4c2a", "eth0", "/var/run/netns/cni-1234"},
		{"3f4c2a", "net1", ""}, // DEL once the namespace is gone
		{"a.b_c-d", "abcdefghijklmno", "/proc/4242/ns/net"},
	}
	for _, c := range ok {
		if err := ValidateCall(c.id, c.ifName, c.netns); err != nil {
			t.Errorf("ValidateCall(%q, %q, %q) = %v", c.id, c.ifName, c.netns, err)
		}
	}
	bad := []struct{ id, ifName, netns, err string }{
		{"", "eth0", "/run/netns/x", "CNI_CONTAINERID"},
		{"-x", "eth0", "/run/netns/x", "CNI_CONTAINERID"},
		{"abc/def", "eth0", "/run/netns/x", "CNI_CONTAINERID"},
		{"abc", "abcdefghijklmnop", "/run/netns/x", "CNI_IFNAME \"abcdefghijklmnop\""},
		{"abc", "eth/0", "/run/netns/x", "CNI_IFNAME"},
		{"abc", "", "/run/netns/x", "CNI_IFNAME"},
		{"abc", "eth0", "run/netns/x", "CNI_NETNS \"run/netns/x\" is not an absolute"},
		{"abc", "eth0", "/run/netns/../x", "CNI_NETNS"},
		{"abc", "eth0", "/run/netns/x\n", "control character"},
		{"abc", "eth0", "/" + strings.Repeat("a", 4096), "CNI_NETNS is 4097 bytes"},
	}
	for _, c := range bad {
		if err := ValidateCall(c.id, c.ifName, c.netns); err == nil || !strings.Contains(err.Error(), c.err) {
			t.Errorf("ValidateCall(%q, %q, %.30q) = %v, want an error with %q", c.id, c.ifName, c.netns, err, c.err)
		}
	}
}
