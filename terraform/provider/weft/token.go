package weft

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/terraform-plugin-framework/attr"
	"github.com/hashicorp/terraform-plugin-framework/path"
	"github.com/hashicorp/terraform-plugin-framework/resource"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/int64default"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/int64planmodifier"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/listplanmodifier"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/mapplanmodifier"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/planmodifier"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/stringdefault"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/stringplanmodifier"
	"github.com/hashicorp/terraform-plugin-framework/types"

	"github.com/weftmesh/weft/agent/api"
	"github.com/weftmesh/weft/meshctl/spec"
)

type tokenResource struct{ client *Client }

func newTokenResource() resource.Resource { return &tokenResource{} }

type tokenModel struct {
	ID          types.String `tfsdk:"id"`
	Cluster     types.String `tfsdk:"cluster"`
	Labels      types.Map    `tfsdk:"labels"`
	AllowLabels types.List   `tfsdk:"allow_labels"`
	PodCIDRs    types.List   `tfsdk:"pod_cidrs"`
	TTL         types.String `tfsdk:"ttl"`
	MaxUses     types.Int64  `tfsdk:"max_uses"`
	ClusterID   types.Int64  `tfsdk:"cluster_id"`
	MeshPool    types.String `tfsdk:"mesh_pool"`
	Token       types.String `tfsdk:"token"`
	ExpiresAt   types.String `tfsdk:"expires_at"`
}

func (r *tokenResource) Metadata(_ context.Context, req resource.MetadataRequest, resp *resource.MetadataResponse) {
	resp.TypeName = req.ProviderTypeName + "_token"
}

func (r *tokenResource) Schema(_ context.Context, _ resource.SchemaRequest, resp *resource.SchemaResponse) {
	replaceS := []planmodifier.String{stringplanmodifier.RequiresReplace()}
	resp.Schema = schema.Schema{
		Description: "A join token ('meshctl token create'): one machine, or max_uses machines, join the mesh with 'meshctl join TOKEN' until it expires. Every change makes a new token; destroy revokes it.",
		Attributes: map[string]schema.Attribute{
			"id": schema.StringAttribute{Computed: true, Description: "The token's id (as in 'meshctl token list').",
				PlanModifiers: []planmodifier.String{stringplanmodifier.UseStateForUnknown()}},
			"cluster": schema.StringAttribute{Optional: true, Computed: true, Description: "Cluster the joining nodes are placed in (default: the seed's own); a cluster with no record yet is created.",
				PlanModifiers: []planmodifier.String{stringplanmodifier.RequiresReplaceIfConfigured(), stringplanmodifier.UseStateForUnknown()}},
			"labels": schema.MapAttribute{Optional: true, ElementType: types.StringType, Description: "Labels given to the joining nodes.",
				PlanModifiers: []planmodifier.Map{mapplanmodifier.RequiresReplace()}},
			"allow_labels": schema.ListAttribute{Optional: true, ElementType: types.StringType, Description: "Labels the nodes may give their workloads (app=web, app=*); default any.",
				PlanModifiers: []planmodifier.List{listplanmodifier.RequiresReplace()}},
			"pod_cidrs": schema.ListAttribute{Optional: true, ElementType: types.StringType, Description: "A token for Kubernetes nodes: the ranges their podCIDRs lie in.",
				PlanModifiers: []planmodifier.List{listplanmodifier.RequiresReplace()}},
			"ttl": schema.StringAttribute{Optional: true, Computed: true, Default: stringdefault.StaticString("1h"), Description: "How long the token is valid, 1m to 720h (default 1h).",
				PlanModifiers: replaceS},
			"max_uses": schema.Int64Attribute{Optional: true, Computed: true, Default: int64default.StaticInt64(1), Description: "How many machines may join with it (default 1; more makes a reusable token, at most 10000).",
				PlanModifiers: []planmodifier.Int64{int64planmodifier.RequiresReplace()}},
			"cluster_id": schema.Int64Attribute{Optional: true, Computed: true, Description: "Id of a new cluster (default: the lowest free); the cluster's id.",
				PlanModifiers: []planmodifier.Int64{int64planmodifier.RequiresReplaceIfConfigured(), int64planmodifier.UseStateForUnknown()}},
			"mesh_pool": schema.StringAttribute{Optional: true, Computed: true, Description: "Mesh pool (CIDR in 100.64.0.0/10) of a new cluster (default: the first free /16); the cluster's pool.",
				PlanModifiers: []planmodifier.String{stringplanmodifier.RequiresReplaceIfConfigured(), stringplanmodifier.UseStateForUnknown()}},
			"token": schema.StringAttribute{Computed: true, Sensitive: true, Description: "The join token string for 'meshctl join' (shown only here).",
				PlanModifiers: []planmodifier.String{stringplanmodifier.UseStateForUnknown()}},
			"expires_at": schema.StringAttribute{Computed: true, Description: "When the token expires (RFC 3339).",
				PlanModifiers: []planmodifier.String{stringplanmodifier.UseStateForUnknown()}},
		},
	}
}

func (r *tokenResource) Configure(_ context.Context, req resource.ConfigureRequest, resp *resource.ConfigureResponse) {
	r.client = clientFrom(req.ProviderData, &resp.Diagnostics)
}

// request turns the model into the API request through spec, which
// checks what meshctl checks. ok is false when a value is not known yet
// (plan time, from another resource): then nothing is checked.
func (m *tokenModel) request(ctx context.Context) (req api.TokenRequest, ok bool, err error) {
	for _, v := range []attr.Value{m.Cluster, m.Labels, m.AllowLabels, m.PodCIDRs, m.TTL, m.MaxUses, m.ClusterID, m.MeshPool} {
		if v.IsUnknown() {
			return req, false, nil
		}
	}
	t := spec.Token{Cluster: m.Cluster.ValueString()}
	if !m.ClusterID.IsNull() {
		id := int(m.ClusterID.ValueInt64())
		t.ClusterID = &id
	}
	if !m.MeshPool.IsNull() {
		p := m.MeshPool.ValueString()
		t.MeshPool = &p
	}
	var labels map[string]string
	if d := m.Labels.ElementsAs(ctx, &labels, false); d.HasError() {
		return req, false, fmt.Errorf("labels: want a map of strings")
	}
	t.Labels = labels
	if d := m.AllowLabels.ElementsAs(ctx, &t.AllowLabels, false); d.HasError() {
		return req, false, fmt.Errorf("allow-labels: want a list of strings")
	}
	if d := m.PodCIDRs.ElementsAs(ctx, &t.PodCIDRs, false); d.HasError() {
		return req, false, fmt.Errorf("pod-cidrs: want a list of strings")
	}
	ttl := "1h"
	if !m.TTL.IsNull() {
		ttl = m.TTL.ValueString()
	}
	if t.TTL, err = spec.ParseTTL(ttl); err != nil {
		return req, false, err
	}
	// max_uses > 1 is meshctl's --reusable --max-uses N; 0 or less is
	// refused as out of range, as meshctl does.
	if n := m.MaxUses.ValueInt64(); !m.MaxUses.IsNull() && n != 1 {
		uses := int(n)
		if int64(uses) != n {
			uses = -1
		}
		t.Reusable, t.MaxUses = true, &uses
	}
	req, err = spec.TokenRequest(t)
	return req, err == nil, err
}

// addFieldError puts a spec error on its attribute.
func addFieldError(diags interface {
	AddAttributeError(path.Path, string, string)
	AddError(string, string)
}, err error) {
	var fe *spec.FieldError
	if errors.As(err, &fe) {
		diags.AddAttributeError(path.Root(fe.Attribute()), "Invalid "+fe.Attribute(), fe.Msg)
		return
	}
	diags.AddError("Invalid configuration", err.Error())
}

func (r *tokenResource) ValidateConfig(ctx context.Context, req resource.ValidateConfigRequest, resp *resource.ValidateConfigResponse) {
	var m tokenModel
	resp.Diagnostics.Append(req.Config.Get(ctx, &m)...)
	if resp.Diagnostics.HasError() {
		return
	}
	if _, _, err := m.request(ctx); err != nil {
		addFieldError(&resp.Diagnostics, err)
	}
}

func (r *tokenResource) Create(ctx context.Context, req resource.CreateRequest, resp *resource.CreateResponse) {
	var m tokenModel
	resp.Diagnostics.Append(req.Plan.Get(ctx, &m)...)
	if resp.Diagnostics.HasError() {
		return
	}
	// Computed attributes left out of the configuration are unknown in
	// the plan: the seed chooses them.
	if m.Cluster.IsUnknown() {
		m.Cluster = types.StringNull()
	}
	if m.ClusterID.IsUnknown() {
		m.ClusterID = types.Int64Null()
	}
	if m.MeshPool.IsUnknown() {
		m.MeshPool = types.StringNull()
	}
	tr, ok, err := m.request(ctx)
	if err == nil && !ok {
		err = errors.New("an attribute is still unknown at apply time: a bug in the provider")
	}
	if err != nil {
		addFieldError(&resp.Diagnostics, err)
		return
	}
	a := apiOrDiag(r.client, &resp.Diagnostics)
	if a == nil {
		return
	}
	ctx, cancel := requestContext(ctx)
	defer cancel()
	tok, err := a.CreateToken(ctx, tr)
	if err != nil {
		resp.Diagnostics.AddError("Creating the join token", err.Error())
		return
	}
	m.ID = types.StringValue(tok.ID)
	m.Cluster = types.StringValue(tok.Cluster)
	m.Token = types.StringValue(tok.JoinToken)
	m.ExpiresAt = types.StringValue(tok.ExpiresAt.UTC().Format(time.RFC3339))
	m.ClusterID = types.Int64Value(int64(tok.ClusterID))
	m.MeshPool = types.StringValue(tok.MeshPool)
	resp.Diagnostics.Append(resp.State.Set(ctx, &m)...)
}

// Read keeps the token while the seed lists it usable; a revoked, expired
// or deleted token is gone, and the next plan makes a new one.
func (r *tokenResource) Read(ctx context.Context, req resource.ReadRequest, resp *resource.ReadResponse) {
	var m tokenModel
	resp.Diagnostics.Append(req.State.Get(ctx, &m)...)
	if resp.Diagnostics.HasError() {
		return
	}
	a := apiOrDiag(r.client, &resp.Diagnostics)
	if a == nil {
		return
	}
	ctx, cancel := requestContext(ctx)
	defer cancel()
	toks, err := a.Tokens(ctx)
	if err != nil {
		resp.Diagnostics.AddError("Listing join tokens", err.Error())
		return
	}
	for _, t := range toks {
		if t.ID != m.ID.ValueString() {
			continue
		}
		if t.Revoked || !time.Now().Before(t.ExpiresAt) {
			break
		}
		m.Cluster = types.StringValue(t.Cluster)
		resp.Diagnostics.Append(resp.State.Set(ctx, &m)...)
		return
	}
	resp.State.RemoveResource(ctx)
}

func (r *tokenResource) Update(_ context.Context, _ resource.UpdateRequest, resp *resource.UpdateResponse) {
	// Every input replaces the token; nothing is updated in place.
	resp.Diagnostics.AddError("weft_token cannot be updated", "every attribute of weft_token replaces it: a bug in the provider's schema")
}

func (r *tokenResource) Delete(ctx context.Context, req resource.DeleteRequest, resp *resource.DeleteResponse) {
	var m tokenModel
	resp.Diagnostics.Append(req.State.Get(ctx, &m)...)
	if resp.Diagnostics.HasError() {
		return
	}
	a := apiOrDiag(r.client, &resp.Diagnostics)
	if a == nil {
		return
	}
	ctx, cancel := requestContext(ctx)
	defer cancel()
	if err := a.RevokeToken(ctx, m.ID.ValueString()); err != nil && !errors.Is(err, api.ErrNotFound) {
		resp.Diagnostics.AddError(fmt.Sprintf("Revoking join token %s", m.ID.ValueString()), err.Error())
	}
}
