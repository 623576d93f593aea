// Tests of the Terraform modules with the real terraform CLI (v1.5.7, built
// by make terraform-tools; internal/tftest skips them in -short mode).
//
// The provider-free submodules (cloud-init, node-rules) hold all the logic
// and are tested fully: init, validate, fmt -check, plan with asserts on the
// plan's outputs, apply, a re-plan with no changes, destroy, the cloud-init
// schema check on every rendered variant, and the validation errors. The
// cloud wrappers (aws-node, gcp-node, azure-node) and examples/multi-cloud
// need cloud providers that cannot be built here, so they are only
// format-checked (terraform fmt -check -recursive).
package terraform_test

import (
	"encoding/base64"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/weftmesh/weft/internal/tftest"
)

// root is the repository's terraform/ directory: go test runs a package's
// tests in the package's directory, and this package is terraform/ itself.
const root = "."

// A token in the format meshctl prints (weft1. and URL-safe base64); the
// distinctive secret makes any leak easy to find.
const testToken = "weft1.eyJzIjoiMTk4LjE4LjEuMTA6NTE4MzQifQ_SECRETnotInOutput-9f2c"

const testSHA = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"

// cloudConfig is the part of a rendered #cloud-config the tests read.
type cloudConfig struct {
	PackageUpdate bool     `yaml:"package_update"`
	Packages      []string `yaml:"packages"`
	WriteFiles    []struct {
		Path        string `yaml:"path"`
		Owner       string `yaml:"owner"`
		Permissions string `yaml:"permissions"`
		Content     string `yaml:"content"`
	} `yaml:"write_files"`
	Runcmd []any `yaml:"runcmd"`
}

func TestCloudInitModule(t *testing.T) {
	w := tftest.New(t, root, "modules/cloud-init")
	w.Init()
	w.Validate()
	w.FmtCheck()

	variants := []struct {
		name string
		vars tftest.Vars
		// what the join command line must hold, in order
		wantArgs []string
		// what the install part of the script must hold
		wantInstall []string
	}{
		{
			name:        "package, no labels, no flags",
			vars:        tftest.Vars{"name": "vm-1", "token": testToken, "package_url": "https://example.com/weft_1.0_amd64.deb"},
			wantArgs:    []string{"'--name' 'vm-1' '--wait' '60s'"},
			wantInstall: []string{"'https://example.com/weft_1.0_amd64.deb'", "apt-get install -y"},
		},
		{
			name: "package, labels and agent flags",
			vars: tftest.Vars{
				"name": "db.east", "token": testToken, "package_url": "https://example.com/weft.deb",
				"labels":            map[string]string{"tier": "back", "app": "db", "example.com/zone": "a"},
				"extra_agent_flags": []string{"--wg-port", "51900", "--underlay-endpoints", "198.18.3.10:51900"},
				"wait":              "2m",
			},
			// labels sorted by key; agent flags after --
			wantArgs: []string{"'--name' 'db.east' '--labels' 'app=db,example.com/zone=a,tier=back' '--wait' '2m' '--' '--wg-port' '51900' '--underlay-endpoints' '198.18.3.10:51900'"},
		},
		{
			name:        "binary, no labels",
			vars:        tftest.Vars{"name": "vm-2", "token": testToken, "binary_url": "https://example.com/weft-linux-amd64.tar.gz", "sha256": testSHA},
			wantArgs:    []string{"'--name' 'vm-2' '--wait' '60s'"},
			wantInstall: []string{"'https://example.com/weft-linux-amd64.tar.gz'", "echo '" + testSHA + "  '", "sha256sum -c -", "'/usr/local/bin/meshctl'"},
		},
		{
			name: "binary, relay, labels, a flag with a quote",
			vars: tftest.Vars{
				"name": "relay-1", "token": testToken, "binary_url": "https://example.com/w.tgz", "sha256": testSHA,
				"relay": true, "labels": map[string]string{"role": "relay"}, "extra_agent_flags": []string{"--log-level", "it's"},
				"install_dir": "/opt/weft/bin", "wait": "0",
			},
			wantArgs:    []string{"'--name' 'relay-1' '--labels' 'role=relay' '--wait' '0' '--relay' '--' '--log-level' 'it'\\''s'"},
			wantInstall: []string{"'/opt/weft/bin/meshctl'"},
		},
	}

	for _, v := range variants {
		t.Run(v.name, func(t *testing.T) {
			p := w.Plan(v.vars)
			userData := sensitiveString(t, p, "user_data")
			encoded := sensitiveString(t, p, "user_data_base64")
			if dec, err := base64.StdEncoding.DecodeString(encoded); err != nil || string(dec) != userData {
				t.Errorf("user_data_base64 does not decode to user_data (err %v)", err)
			}
			assertNoTokenOutside(t, p)

			if !strings.HasPrefix(userData, "#cloud-config\n") {
				t.Fatalf("user_data does not start with #cloud-config:\n%s", userData)
			}
			tftest.ValidateCloudConfig(t, []byte(userData))

			var cc cloudConfig
			if err := yaml.Unmarshal([]byte(userData), &cc); err != nil {
				t.Fatalf("user_data is not YAML: %v\n%s", err, userData)
			}
			if len(cc.WriteFiles) != 2 {
				t.Fatalf("write_files has %d entries, want the token and the join script", len(cc.WriteFiles))
			}
			tok, script := cc.WriteFiles[0], cc.WriteFiles[1]
			if tok.Path != "/etc/weft/join-token" || tok.Permissions != "0600" || tok.Owner != "root:root" || strings.TrimSpace(tok.Content) != testToken {
				t.Errorf("token file = %s %s %s %q, want /etc/weft/join-token 0600 root:root with the token", tok.Path, tok.Permissions, tok.Owner, tok.Content)
			}
			if script.Permissions != "0700" || script.Owner != "root:root" {
				t.Errorf("join script %s is %s %s, want 0700 root:root", script.Path, script.Permissions, script.Owner)
			}
			if strings.Contains(script.Content, "SECRET") || strings.Contains(script.Content, testToken) {
				t.Errorf("the join script holds the token:\n%s", script.Content)
			}
			runcmd, _ := json.Marshal(cc.Runcmd)
			if strings.Contains(string(runcmd), "SECRET") || strings.Contains(string(runcmd), "weft1.") {
				t.Errorf("runcmd holds the token: %s", runcmd)
			}
			if want := `[["` + script.Path + `"]]`; string(runcmd) != want {
				t.Errorf("runcmd = %s, want %s (the join script, once per instance)", runcmd, want)
			}
			if !cc.PackageUpdate || !slices.Contains(cc.Packages, "curl") {
				t.Errorf("package_update %v, packages %v: the script needs curl from fresh package lists", cc.PackageUpdate, cc.Packages)
			}

			// Both join commands (first join with the token file, and the
			// tokenless re-join) carry the flags.
			first := "join --token-file \"$TOKEN_FILE\" " + v.wantArgs[0]
			again := "join " + v.wantArgs[0] + "\n"
			for _, want := range []string{first, again} {
				if !strings.Contains(script.Content, want) {
					t.Errorf("join script lacks %q:\n%s", want, script.Content)
				}
			}
			if !strings.Contains(script.Content, `rm -f "$TOKEN_FILE"`) {
				t.Errorf("join script never removes the token file:\n%s", script.Content)
			}
			for _, want := range v.wantInstall {
				if !strings.Contains(script.Content, want) {
					t.Errorf("join script lacks %q:\n%s", want, script.Content)
				}
			}
			_, isPackage := v.vars["package_url"]
			if isPackage == strings.Contains(script.Content, "sha256sum") {
				t.Errorf("package install %v but sha256sum check present %v", isPackage, !isPackage)
			}

			cmd, ok := p.OutputChanges["join_command"].After.(string)
			if !ok || !strings.HasSuffix(cmd, "--token-file /etc/weft/join-token "+v.wantArgs[0]) {
				t.Errorf("join_command = %q, want it to end with the join flags %s", cmd, v.wantArgs[0])
			}
		})
	}

	t.Run("apply, re-plan, destroy", func(t *testing.T) {
		vars := variants[1].vars
		planned := sensitiveString(t, w.Plan(vars), "user_data")
		w.Apply(vars)
		out := w.Outputs()
		if out["user_data"] != planned {
			t.Errorf("applied user_data differs from the planned one")
		}
		w.PlanIsEmpty(vars)
		w.Destroy(vars)
		if len(w.Outputs()) != 0 {
			t.Errorf("outputs left after destroy: %v", w.Outputs())
		}
	})
}

func TestCloudInitValidation(t *testing.T) {
	w := tftest.New(t, root, "modules/cloud-init")
	w.Init()
	pkg := "https://example.com/weft.deb"
	cases := []struct {
		name string
		vars tftest.Vars
		want string
	}{
		{"both install sources", tftest.Vars{"name": "vm-1", "token": testToken, "package_url": pkg, "binary_url": "https://example.com/w.tar.gz", "sha256": testSHA},
			"Set exactly one install source: package_url (a .deb) or binary_url (a .tar.gz with sha256), not both."},
		{"no install source", tftest.Vars{"name": "vm-1", "token": testToken},
			"Set exactly one install source: package_url (a .deb) or binary_url (a .tar.gz with sha256), not neither."},
		{"binary_url without sha256", tftest.Vars{"name": "vm-1", "token": testToken, "binary_url": "https://example.com/w.tar.gz"},
			"binary_url needs sha256, the hex SHA-256 of the archive ('sha256sum FILE')"},
		{"bad sha256", tftest.Vars{"name": "vm-1", "token": testToken, "binary_url": "https://example.com/w.tar.gz", "sha256": "abc"},
			"sha256 must be 64 lower-case hex digits"},
		{"package_url not a .deb", tftest.Vars{"name": "vm-1", "token": testToken, "package_url": "https://example.com/weft.rpm"},
			"package_url must be an http(s) URL of a .deb package"},
		// The script logs the URL inside double quotes: a $( ) in it would run as root.
		{"package_url with a command substitution", tftest.Vars{"name": "vm-1", "token": testToken, "package_url": "https://example.com/$(reboot).deb"},
			"package_url must be an http(s) URL of a .deb package with no spaces, quotes, $"},
		{"binary_url with a backtick", tftest.Vars{"name": "vm-1", "token": testToken, "binary_url": "https://example.com/`id`.tar.gz", "sha256": testSHA},
			"binary_url must be an http(s) URL of a .tar.gz (or .tgz) archive with no spaces, quotes, $"},
		{"upper-case name", tftest.Vars{"name": "VM_1", "token": testToken, "package_url": pkg},
			"The node name is not valid: use 1-63 lower-case letters, digits, '-' and '.'"},
		{"name too long", tftest.Vars{"name": strings.Repeat("a", 64), "token": testToken, "package_url": pkg},
			"The node name must be 1-63 characters long"},
		{"name ends with a dash", tftest.Vars{"name": "vm-", "token": testToken, "package_url": pkg},
			"The node name is not valid"},
		{"bad label key", tftest.Vars{"name": "vm-1", "token": testToken, "package_url": pkg, "labels": map[string]string{"app=web": "x"}},
			"A label key is not valid: write keys like app or example.com/tier"},
		{"bad label value", tftest.Vars{"name": "vm-1", "token": testToken, "package_url": pkg, "labels": map[string]string{"app": "web server"}},
			"A label value is not valid"},
		{"not a token", tftest.Vars{"name": "vm-1", "token": "hunter2", "package_url": pkg},
			"The token is not a Weft join token"},
		{"bad wait", tftest.Vars{"name": "vm-1", "token": testToken, "package_url": pkg, "wait": "60"},
			"wait must be a Go duration such as 60s"},
		{"flag with a newline", tftest.Vars{"name": "vm-1", "token": testToken, "package_url": pkg, "extra_agent_flags": []string{"--x\nrm -rf /"}},
			"extra_agent_flags must not hold empty strings or strings with newlines"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			out := planFails(t, w, tc.vars)
			if !strings.Contains(out, tc.want) {
				t.Errorf("terraform plan does not say %q:\n%s", tc.want, out)
			}
			if strings.Contains(out, "SECRETnotInOutput") {
				t.Errorf("the error shows the token:\n%s", out)
			}
		})
	}
}

func TestNodeRulesModule(t *testing.T) {
	w := tftest.New(t, root, "modules/node-rules")
	w.Init()
	w.Validate()
	w.FmtCheck()

	mesh := []any{"10.0.0.0/16", "198.51.100.7/32"}
	joiners := []any{"10.1.0.0/24"}
	type port struct {
		proto string
		port  float64 // JSON numbers
		cidrs []any
	}
	cases := []struct {
		role string
		vars tftest.Vars
		want []port
	}{
		{"node", tftest.Vars{"role": "node", "allowed_cidrs": mesh},
			[]port{{"udp", 51833, mesh}, {"udp", 51840, mesh}}},
		{"relay", tftest.Vars{"role": "relay", "allowed_cidrs": mesh},
			[]port{{"udp", 51833, mesh}, {"udp", 51840, mesh}, {"udp", 51838, mesh}}},
		{"seed", tftest.Vars{"role": "seed", "allowed_cidrs": mesh, "join_cidrs": joiners},
			[]port{{"udp", 51833, mesh}, {"udp", 51840, mesh}, {"tcp", 51834, joiners}, {"tcp", 2379, joiners}}},
	}
	for _, tc := range cases {
		t.Run(tc.role, func(t *testing.T) {
			tc.vars["name_prefix"] = "prod"
			tc.vars["tags"] = map[string]string{" Team ": " net ", "env": "prod"}
			p := w.Plan(tc.vars)
			rules, ok := p.OutputChanges["ingress_rules"].After.([]any)
			if !ok {
				t.Fatalf("ingress_rules is %T, want a list", p.OutputChanges["ingress_rules"].After)
			}
			if len(rules) != len(tc.want) {
				t.Fatalf("%d ingress rules, want %d: %v", len(rules), len(tc.want), rules)
			}
			names := map[string]bool{}
			for i, r := range rules {
				rule := r.(map[string]any)
				want := tc.want[i]
				if rule["protocol"] != want.proto || rule["from_port"] != want.port || rule["to_port"] != want.port {
					t.Errorf("rule %d = %v %v-%v, want %s %v", i, rule["protocol"], rule["from_port"], rule["to_port"], want.proto, want.port)
				}
				if !slices.Equal(rule["cidrs"].([]any), want.cidrs) {
					t.Errorf("rule %d (%v) from %v, want %v", i, rule["name"], rule["cidrs"], want.cidrs)
				}
				name, _ := rule["name"].(string)
				if !strings.HasPrefix(name, "prod-"+tc.role+"-") || names[name] {
					t.Errorf("rule %d name %q: want a unique name starting prod-%s-", i, name, tc.role)
				}
				names[name] = true
				if d, _ := rule["description"].(string); !strings.Contains(d, strings.ToUpper(want.proto)) {
					t.Errorf("rule %d description %q does not say the protocol", i, d)
				}
			}
			if got := p.OutputChanges["name"].After; got != "prod-"+tc.role {
				t.Errorf("name = %v, want prod-%s", got, tc.role)
			}
			wantTags := map[string]any{"team": "net", "env": "prod", "weft-role": tc.role}
			gotTags, _ := p.OutputChanges["tags"].After.(map[string]any)
			if len(gotTags) != len(wantTags) {
				t.Errorf("tags = %v, want %v", gotTags, wantTags)
			}
			for k, v := range wantTags {
				if gotTags[k] != v {
					t.Errorf("tags[%s] = %v, want %v (all tags %v)", k, gotTags[k], v, gotTags)
				}
			}
		})
	}

	t.Run("apply, re-plan, destroy", func(t *testing.T) {
		vars := tftest.Vars{"role": "seed", "allowed_cidrs": mesh, "join_cidrs": joiners}
		w.Apply(vars)
		rules, _ := w.Outputs()["ingress_rules"].([]any)
		if len(rules) != 4 {
			t.Errorf("applied seed has %d ingress rules, want 4: %v", len(rules), rules)
		}
		w.PlanIsEmpty(vars)
		w.Destroy(vars)
	})
}

func TestNodeRulesValidation(t *testing.T) {
	w := tftest.New(t, root, "modules/node-rules")
	w.Init()
	mesh := []string{"10.0.0.0/16"}
	cases := []struct {
		name string
		vars tftest.Vars
		want string
	}{
		{"bad role", tftest.Vars{"role": "master", "allowed_cidrs": mesh},
			`role must be one of "seed", "node" or "relay".`},
		{"seed without join_cidrs", tftest.Vars{"role": "seed", "allowed_cidrs": mesh},
			`role "seed" needs join_cidrs`},
		{"join_cidrs on a node", tftest.Vars{"role": "node", "allowed_cidrs": mesh, "join_cidrs": mesh},
			`join_cidrs is only for role "seed" (only the seed runs the join service and etcd); remove it for role "node".`},
		{"no allowed_cidrs", tftest.Vars{"role": "node", "allowed_cidrs": []string{}},
			"allowed_cidrs is empty"},
		{"host bits set", tftest.Vars{"role": "node", "allowed_cidrs": []string{"10.0.0.1/16"}},
			"Every entry of allowed_cidrs must be a CIDR prefix with no host bits set"},
		{"not a CIDR", tftest.Vars{"role": "seed", "allowed_cidrs": mesh, "join_cidrs": []string{"10.0.0.300/24"}},
			"Every entry of join_cidrs must be a CIDR prefix"},
		{"bad name_prefix", tftest.Vars{"role": "node", "allowed_cidrs": mesh, "name_prefix": "Weft_Prod"},
			"name_prefix must be 1-40 lower-case letters, digits and '-'"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if out := planFails(t, w, tc.vars); !strings.Contains(out, tc.want) {
				t.Errorf("terraform plan does not say %q:\n%s", tc.want, out)
			}
		})
	}
}

// TestCloudWrappersFormat only format-checks the cloud wrappers and the
// multi-cloud example: they need the aws, google and azurerm providers,
// which cannot be built here, so init, validate and plan are not possible.
// Their logic lives in the submodules tested above.
func TestCloudWrappersFormat(t *testing.T) {
	for _, dir := range []string{"modules/aws-node", "modules/gcp-node", "modules/azure-node", "examples/multi-cloud"} {
		t.Run(dir, func(t *testing.T) {
			w := tftest.New(t, root, dir)
			w.FmtCheck()
		})
	}
}

// planFails runs terraform plan with vars and returns its output, failing
// the test if the plan succeeds. The output's white space is normalized:
// terraform wraps diagnostics at 78 columns. The variables are one to a
// line, as a person writes them: terraform quotes the line of a refused
// value from the file, and only that line.
func planFails(t *testing.T, w *tftest.Workdir, vars tftest.Vars) string {
	t.Helper()
	data, err := json.MarshalIndent(vars, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "vars.tfvars.json")
	if err := os.WriteFile(file, data, 0o600); err != nil {
		t.Fatal(err)
	}
	code, out := w.RunErr("plan", "-input=false", "-no-color", "-var-file="+file)
	if code == 0 {
		t.Fatalf("terraform plan accepted %v:\n%s", vars, out)
	}
	return strings.Join(strings.Fields(out), " ")
}

// sensitiveString returns output name's planned value, failing the test
// unless the plan marks it sensitive.
func sensitiveString(t *testing.T, p *tftest.Plan, name string) string {
	t.Helper()
	oc, ok := p.OutputChanges[name]
	if !ok {
		t.Fatalf("the plan has no output %s", name)
	}
	if oc.AfterSensitive != true {
		t.Errorf("output %s is not marked sensitive (after_sensitive %v): it holds the token", name, oc.AfterSensitive)
	}
	s, ok := oc.After.(string)
	if !ok {
		t.Fatalf("output %s is %T, want a string", name, oc.After)
	}
	return s
}

// assertNoTokenOutside checks that no output that is not sensitive holds
// the token or its secret part.
func assertNoTokenOutside(t *testing.T, p *tftest.Plan) {
	t.Helper()
	for name, oc := range p.OutputChanges {
		if oc.AfterSensitive == true {
			continue
		}
		data, _ := json.Marshal(oc.After)
		if strings.Contains(string(data), "weft1.") || strings.Contains(string(data), "SECRET") {
			t.Errorf("output %s is not sensitive but holds the token: %s", name, data)
		}
	}
}
