package tftest

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
)

// Plan is the part of `terraform show -json PLANFILE` the tests read.
type Plan struct {
	// ResourceChanges holds every resource (and data source read at
	// apply time) in the plan, no-op ones included.
	ResourceChanges []ResourceChange
	// OutputChanges maps an output name to its change.
	OutputChanges map[string]OutputChange
	// PriorState is the state before the plan, with the data sources read
	// while planning (JSON, as terraform wrote it; null when empty).
	PriorState json.RawMessage
	// Raw is the whole JSON document.
	Raw json.RawMessage
}

// ResourceChange is one entry of the plan's resource_changes.
type ResourceChange struct {
	Address, Type, Name string
	// Actions: ["create"], ["update"], ["delete"], ["no-op"], ["read"],
	// or a replacement: ["delete", "create"] / ["create", "delete"].
	Actions []string
	// After is the resource's attributes after the change (decoded
	// JSON); values known only after apply are absent, and a delete has
	// nil.
	After map[string]any
}

// OutputChange is one entry of the plan's output_changes.
type OutputChange struct {
	Actions []string
	// After is the output's value after the change (decoded JSON); nil
	// if it is unknown until apply.
	After any
	// AfterSensitive is true (or a structure of booleans) where the
	// value is sensitive.
	AfterSensitive any
}

func parsePlan(data []byte) (*Plan, error) {
	var doc struct {
		ResourceChanges []struct {
			Address string `json:"address"`
			Type    string `json:"type"`
			Name    string `json:"name"`
			Change  struct {
				Actions []string       `json:"actions"`
				After   map[string]any `json:"after"`
			} `json:"change"`
		} `json:"resource_changes"`
		OutputChanges map[string]struct {
			Actions        []string `json:"actions"`
			After          any      `json:"after"`
			AfterSensitive any      `json:"after_sensitive"`
		} `json:"output_changes"`
		PriorState json.RawMessage `json:"prior_state"`
	}
	if err := json.Unmarshal(data, &doc); err != nil {
		return nil, err
	}
	p := &Plan{
		OutputChanges: make(map[string]OutputChange, len(doc.OutputChanges)),
		PriorState:    doc.PriorState,
		Raw:           json.RawMessage(data),
	}
	for _, rc := range doc.ResourceChanges {
		p.ResourceChanges = append(p.ResourceChanges, ResourceChange{
			Address: rc.Address, Type: rc.Type, Name: rc.Name,
			Actions: rc.Change.Actions, After: rc.Change.After,
		})
	}
	for name, oc := range doc.OutputChanges {
		p.OutputChanges[name] = OutputChange{Actions: oc.Actions, After: oc.After, AfterSensitive: oc.AfterSensitive}
	}
	return p, nil
}

// Change returns the change for a resource address (e.g.
// "module.node.local_file.cloud_init[0]"), failing the test, with the
// addresses the plan does hold, if there is none.
func (p *Plan) Change(t testing.TB, address string) ResourceChange {
	t.Helper()
	rc, err := p.change(address)
	if err != nil {
		t.Fatal(err)
	}
	return rc
}

func (p *Plan) change(address string) (ResourceChange, error) {
	addrs := make([]string, 0, len(p.ResourceChanges))
	for _, rc := range p.ResourceChanges {
		if rc.Address == address {
			return rc, nil
		}
		addrs = append(addrs, rc.Address)
	}
	return ResourceChange{}, fmt.Errorf("plan has no change for %s; it has: %s", address, strings.Join(addrs, ", "))
}
