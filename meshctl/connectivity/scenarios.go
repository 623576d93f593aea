package connectivity

import (
	"bytes"
	"embed"
	"fmt"

	"go.yaml.in/yaml/v3"

	"github.com/weftmesh/weft/policy"
)

// Labels of the probe workloads: the run they belong to and their role
// (client or echo). The scenario policies select on both.
const (
	runLabel  = "weft-probe-run"
	roleLabel = "weft-probe-role"
)

// policyFiles are the scenario policies, as a user would write them.
//
//go:embed policies/*.yaml
var policyFiles embed.FS

// policyScenario is a scenario that applies a policy and checks what the
// probe client reaches on each echo port under it.
type policyScenario struct {
	name           string // as reported
	file           string // in policies/
	allowA, allowB bool   // may the client reach the echoes on PortA, PortB (TCP)?
}

// policyScenarios run in this order, after the baseline scenarios.
var policyScenarios = []policyScenario{
	{name: "ingress allow/deny", file: "ingress.yaml", allowA: true, allowB: false},
	{name: "egress allow/deny", file: "egress.yaml", allowA: true, allowB: false},
	{name: "deny beats allow", file: "deny.yaml", allowA: true, allowB: false},
}

// renderPolicy returns the scenario policy file as this run applies it:
// named name, and selecting only workloads labelled weft-probe-run=run.
//
// The files are complete policy documents with placeholder values, so
// they read (and are validated by the tests) like any policy. The run's
// values are set in the parsed YAML tree, not by text substitution: a
// value is always one string scalar (quoted, so a run id of digits stays
// a string and not a number) and can never change the document's
// structure. Building the document as a Go value would mean a second
// description of the policy schema next to package policy's parser;
// editing the tree keeps the file the only description. The result is
// parsed with policy.Parse, as the agent will, before it is returned.
func renderPolicy(file, name, run string) ([]byte, error) {
	data, err := policyFiles.ReadFile("policies/" + file)
	if err != nil {
		return nil, fmt.Errorf("scenario policy %s: %w", file, err)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("scenario policy %s: %w", file, err)
	}
	if len(doc.Content) != 1 {
		return nil, fmt.Errorf("scenario policy %s: want one YAML document", file)
	}
	root := doc.Content[0]
	meta := mapValue(root, "metadata")
	nameNode := mapValue(meta, "name")
	if nameNode == nil {
		return nil, fmt.Errorf("scenario policy %s: no metadata.name to set", file)
	}
	setString(nameNode, name)
	// A scenario policy that does not select on the run label would apply
	// to every workload of the mesh, not only to this run's probes.
	if n := setEvery(root, runLabel, run); n == 0 {
		return nil, fmt.Errorf("scenario policy %s: no %s label to scope it to the run: it would select real workloads", file, runLabel)
	}
	var out bytes.Buffer
	enc := yaml.NewEncoder(&out)
	enc.SetIndent(2)
	if err := enc.Encode(&doc); err != nil {
		return nil, fmt.Errorf("scenario policy %s: %w", file, err)
	}
	if err := enc.Close(); err != nil {
		return nil, fmt.Errorf("scenario policy %s: %w", file, err)
	}
	if _, err := policy.ParseOne(name+".yaml", out.Bytes()); err != nil {
		return nil, fmt.Errorf("scenario policy %s for run %s: %w", file, run, err)
	}
	return out.Bytes(), nil
}

// mapValue returns the value of key in mapping node n, or nil.
func mapValue(n *yaml.Node, key string) *yaml.Node {
	if n == nil || n.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == key {
			return n.Content[i+1]
		}
	}
	return nil
}

// setEvery sets the value of key in every mapping under n and returns how
// many it set.
func setEvery(n *yaml.Node, key, value string) int {
	count := 0
	if n.Kind == yaml.MappingNode {
		for i := 0; i+1 < len(n.Content); i += 2 {
			if n.Content[i].Value == key {
				setString(n.Content[i+1], value)
				count++
			}
		}
	}
	for _, c := range n.Content {
		count += setEvery(c, key, value)
	}
	return count
}

func setString(n *yaml.Node, value string) {
	*n = yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: value, Style: yaml.DoubleQuotedStyle}
}
