package identity

import (
	"errors"
	"strings"
	"testing"
)

// Only a Kubernetes node's agent sets the namespace labels: a VM's or a
// workload's own labels may not carry them.
func TestUserLabelsCannotClaimANamespace(t *testing.T) {
	for _, m := range []map[string]string{
		{"k8s:" + K8sNamespaceKey: "prod"},
		{"k8s:" + K8sNamespaceLabelPrefix + "team": "a"},
	} {
		_, err := ParseUserLabelMap(m)
		if !errors.Is(err, ErrInvalidLabel) || !strings.Contains(err.Error(), "namespace") {
			t.Errorf("ParseUserLabelMap(%v) = %v; want a refusal naming the namespace keys", m, err)
		}
	}
	// The same key under the vm source is just a label.
	if _, err := ParseUserLabelMap(map[string]string{"vm:" + K8sNamespaceKey: "prod", "k8s:app": "web"}); err != nil {
		t.Fatalf("vm: key and a k8s: app label refused: %v", err)
	}
}
