package plugin

import (
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// FuzzParseArgs: CNI_ARGS never panics the parser, and what it accepts is
// a valid pod that reads back the same from its canonical form.
func FuzzParseArgs(f *testing.F) {
	for _, s := range []string{
		kubeletArgs, "", "IgnoreUnknown=1", "K8S_POD_NAMESPACE=a;K8S_POD_NAME=b", "a=b=c", ";;", "IgnoreUnknown=1;X=y",
		"CommonArgs=x", "IgnoreUnknown=true;K8S_POD_NAME=x.y", "K8S_POD_UID=" + strings.Repeat("f", 129),
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParseArgs(s)
		if err != nil {
			return
		}
		if p.Namespace != "" && !dnsLabel.MatchString(p.Namespace) || len(p.Namespace) > 63 {
			t.Fatalf("accepted namespace %q", p.Namespace)
		}
		if p.Name != "" && !dnsSubdomain.MatchString(p.Name) || len(p.Name) > 253 {
			t.Fatalf("accepted name %q", p.Name)
		}
		if p.UID != "" && !podUID.MatchString(p.UID) {
			t.Fatalf("accepted UID %q", p.UID)
		}
		var kv []string
		for _, x := range [][2]string{{"K8S_POD_NAMESPACE", p.Namespace}, {"K8S_POD_NAME", p.Name}, {"K8S_POD_UID", p.UID}} {
			if x[1] != "" {
				kv = append(kv, x[0]+"="+x[1])
			}
		}
		again, err := ParseArgs(strings.Join(kv, ";"))
		if err != nil || again != p {
			t.Fatalf("%+v does not read back: %+v, %v", p, again, err)
		}
	})
}

// FuzzParseConfig: the network configuration never panics the parser, and
// what it accepts holds only valid values.
func FuzzParseConfig(f *testing.F) {
	for _, s := range []string{
		primaryConf, chainedConf(ptpResult), chainedConf(bridgeResult),
		`{"cniVersion":"0.4.0","name":"n","timeout":90,"prevResult":{"ips":[{"version":"4","address":"10.0.0.1/8"}]}}`,
		`{"cniVersion":"1.1.0","name":"n","timeout":"1m","logFile":"/x/y"}`,
		`{"cniVersion":"1.0.0","name":"n","prevResult":{"cniVersion":"0.2.0"}}`,
		`{"cniVersion":"1.0.0","name":"n","prevResult":null}`, `[]`, `null`, `{"name":1}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := ParseConfig(data)
		if err != nil {
			return
		}
		if !slices.Contains(SupportedVersions, c.CNIVersion) {
			t.Fatalf("accepted cniVersion %q", c.CNIVersion)
		}
		if c.Timeout < 1e9 || c.Timeout > MaxTimeout {
			t.Fatalf("accepted timeout %v", c.Timeout)
		}
		if !filepath.IsAbs(c.AgentSocket) || len(c.AgentSocket) > maxSocketPath {
			t.Fatalf("accepted agentSocket %q", c.AgentSocket)
		}
		if c.LogFile != "" && !filepath.IsAbs(c.LogFile) {
			t.Fatalf("accepted logFile %q", c.LogFile)
		}
		if c.Chained() {
			// A chained ADD reads the previous result: it must not panic
			// whatever the result holds.
			_, _ = ChainedInput(c.PrevResult, "eth0", hostLinks, c.ChainedAfter)
		}
	})
}
