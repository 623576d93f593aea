package weft

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/terraform-plugin-framework/attr"
	"github.com/hashicorp/terraform-plugin-framework/diag"
	"github.com/hashicorp/terraform-plugin-framework/path"
	"github.com/hashicorp/terraform-plugin-framework/types"
)

func model() tokenModel {
	return tokenModel{
		Cluster: types.StringNull(), Labels: types.MapNull(types.StringType), AllowLabels: types.ListNull(types.StringType),
		PodCIDRs: types.ListNull(types.StringType), TTL: types.StringNull(), MaxUses: types.Int64Null(),
		ClusterID: types.Int64Null(), MeshPool: types.StringNull(),
	}
}

// TestTokenRequest: the attributes map onto meshctl's request, and a bad
// value is an error on its attribute with meshctl's message.
func TestTokenRequest(t *testing.T) {
	ctx := context.Background()
	m := model()
	req, ok, err := m.request(ctx)
	if err != nil || !ok || req.MaxUses != 1 || time.Duration(req.TTL) != time.Hour {
		t.Fatalf("defaults: %+v %v %v", req, ok, err)
	}
	m.MaxUses = types.Int64Value(7)
	m.Labels = types.MapValueMust(types.StringType, map[string]attr.Value{"app": types.StringValue("web")})
	if req, _, err = m.request(ctx); err != nil || req.MaxUses != 7 || req.Labels["app"] != "web" {
		t.Fatalf("max_uses 7: %+v %v", req, err)
	}
	m.ClusterID = types.Int64Unknown()
	if _, ok, err := m.request(ctx); ok || err != nil {
		t.Errorf("an unknown value is checked at apply, not plan: ok %v err %v", ok, err)
	}
	for _, tc := range []struct {
		set       func(*tokenModel)
		attr, msg string
	}{
		{func(m *tokenModel) { m.MaxUses = types.Int64Value(0) }, "max_uses", "0 is out of range: use 1 to 10000"},
		{func(m *tokenModel) { m.TTL = types.StringValue("2000h") }, "ttl", "is out of range: use 1m to 720h"},
		{func(m *tokenModel) { m.TTL = types.StringValue("soon") }, "ttl", `"soon" is not a duration`},
		{func(m *tokenModel) { m.ClusterID = types.Int64Value(-1) }, "cluster_id", "-1 is out of range"},
		{func(m *tokenModel) {
			m.PodCIDRs = types.ListValueMust(types.StringType, []attr.Value{types.StringValue("100.96.0.1/16")})
		}, "pod_cidrs", "is not a CIDR in canonical form"},
	} {
		m := model()
		tc.set(&m)
		_, _, err := m.request(ctx)
		var diags diag.Diagnostics
		addFieldError(&diags, err)
		if len(diags) != 1 {
			t.Fatalf("%s: %v", tc.attr, diags)
		}
		d, ok := diags[0].(diag.DiagnosticWithPath)
		if !ok || !d.Path().Equal(path.Root(tc.attr)) || !strings.Contains(d.Detail(), tc.msg) {
			t.Errorf("%s: got %v %q, want the path %s and %q", tc.attr, ok, d.Detail(), tc.attr, tc.msg)
		}
	}
}
