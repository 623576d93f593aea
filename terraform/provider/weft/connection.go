package weft

import (
	"context"
	"errors"

	"github.com/hashicorp/terraform-plugin-framework/path"
	"github.com/hashicorp/terraform-plugin-framework/resource"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/booldefault"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/boolplanmodifier"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/int64planmodifier"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/planmodifier"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/stringdefault"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/stringplanmodifier"
	"github.com/hashicorp/terraform-plugin-framework/types"

	"github.com/weftmesh/weft/agent/api"
)

type connectionResource struct{ client *Client }

func newClusterConnectionResource() resource.Resource { return &connectionResource{} }

type connectionModel struct {
	ID        types.String `tfsdk:"id"`
	Token     types.String `tfsdk:"token"`
	Mode      types.String `tfsdk:"mode"`
	Push      types.Bool   `tfsdk:"push"`
	Name      types.String `tfsdk:"name"`
	ClusterID types.Int64  `tfsdk:"cluster_id"`
	MeshPool  types.String `tfsdk:"mesh_pool"`
}

func (r *connectionResource) Metadata(_ context.Context, req resource.MetadataRequest, resp *resource.MetadataResponse) {
	resp.TypeName = req.ProviderTypeName + "_cluster_connection"
}

func (r *connectionResource) Schema(_ context.Context, _ resource.SchemaRequest, resp *resource.SchemaResponse) {
	keep := []planmodifier.String{stringplanmodifier.UseStateForUnknown()}
	resp.Schema = schema.Schema{
		Description: "Connects this provider's cluster to another ('meshctl cluster connect'), with a cluster token made on the other cluster's seed ('meshctl cluster token'). Destroy disconnects, in both directions.",
		Attributes: map[string]schema.Attribute{
			"id": schema.StringAttribute{Computed: true, Description: "The connected cluster's name.", PlanModifiers: keep},
			"token": schema.StringAttribute{Required: true, Sensitive: true, Description: "The other cluster's cluster token (used once).",
				PlanModifiers: []planmodifier.String{stringplanmodifier.RequiresReplace()}},
			"mode": schema.StringAttribute{Optional: true, Computed: true, Default: stringdefault.StaticString("mirror"),
				Description:   "mirror (the seed copies the remote records, the default) or direct (agents watch the remote etcd).",
				PlanModifiers: []planmodifier.String{stringplanmodifier.RequiresReplace()}},
			"push": schema.BoolAttribute{Optional: true, Computed: true, Default: booldefault.StaticBool(false),
				Description:   "This cluster cannot be reached from the other (behind NAT): push its records into the other's etcd.",
				PlanModifiers: []planmodifier.Bool{boolplanmodifier.RequiresReplace()}},
			"name":       schema.StringAttribute{Computed: true, Description: "The connected cluster's name.", PlanModifiers: keep},
			"cluster_id": schema.Int64Attribute{Computed: true, Description: "The connected cluster's id.", PlanModifiers: []planmodifier.Int64{int64planmodifier.UseStateForUnknown()}},
			"mesh_pool":  schema.StringAttribute{Computed: true, Description: "The connected cluster's mesh pool.", PlanModifiers: keep},
		},
	}
}

func (r *connectionResource) Configure(_ context.Context, req resource.ConfigureRequest, resp *resource.ConfigureResponse) {
	r.client = clientFrom(req.ProviderData, &resp.Diagnostics)
}

func (r *connectionResource) ValidateConfig(ctx context.Context, req resource.ValidateConfigRequest, resp *resource.ValidateConfigResponse) {
	var m connectionModel
	resp.Diagnostics.Append(req.Config.Get(ctx, &m)...)
	if resp.Diagnostics.HasError() {
		return
	}
	if v := m.Mode.ValueString(); !m.Mode.IsUnknown() && !m.Mode.IsNull() && v != "mirror" && v != "direct" {
		resp.Diagnostics.AddAttributeError(path.Root("mode"), "Invalid mode", "--mode "+v+": use mirror or direct")
	}
	if !m.Token.IsUnknown() && !m.Token.IsNull() && m.Token.ValueString() == "" {
		resp.Diagnostics.AddAttributeError(path.Root("token"), "Empty cluster token", "give the token 'meshctl cluster token' printed on the other cluster's seed")
	}
}

func (r *connectionResource) Create(ctx context.Context, req resource.CreateRequest, resp *resource.CreateResponse) {
	var m connectionModel
	resp.Diagnostics.Append(req.Plan.Get(ctx, &m)...)
	if resp.Diagnostics.HasError() {
		return
	}
	a := apiOrDiag(r.client, &resp.Diagnostics)
	if a == nil {
		return
	}
	ctx, cancel := requestContext(ctx)
	defer cancel()
	rc, err := a.ConnectCluster(ctx, api.ClusterConnectRequest{Token: m.Token.ValueString(), Mode: m.Mode.ValueString(), Push: m.Push.ValueBool()})
	if err != nil {
		resp.Diagnostics.AddError("Connecting the cluster", err.Error())
		return
	}
	m.set(rc)
	resp.Diagnostics.Append(resp.State.Set(ctx, &m)...)
}

func (m *connectionModel) set(rc api.RemoteCluster) {
	m.ID = types.StringValue(rc.Name)
	m.Name = types.StringValue(rc.Name)
	m.ClusterID = types.Int64Value(int64(rc.ID))
	m.MeshPool = types.StringValue(rc.MeshPool)
	if rc.Mode != "" {
		m.Mode = types.StringValue(rc.Mode)
	}
	m.Push = types.BoolValue(rc.Push)
}

func (r *connectionResource) Read(ctx context.Context, req resource.ReadRequest, resp *resource.ReadResponse) {
	var m connectionModel
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
	cs, err := a.Clusters(ctx)
	if err != nil {
		resp.Diagnostics.AddError("Listing connected clusters", err.Error())
		return
	}
	for _, c := range cs {
		if c.Name == m.Name.ValueString() {
			m.set(c)
			resp.Diagnostics.Append(resp.State.Set(ctx, &m)...)
			return
		}
	}
	resp.State.RemoveResource(ctx)
}

func (r *connectionResource) Update(_ context.Context, _ resource.UpdateRequest, resp *resource.UpdateResponse) {
	resp.Diagnostics.AddError("weft_cluster_connection cannot be updated", "every attribute replaces the connection: a bug in the provider's schema")
}

func (r *connectionResource) Delete(ctx context.Context, req resource.DeleteRequest, resp *resource.DeleteResponse) {
	var m connectionModel
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
	if err := a.DisconnectCluster(ctx, m.Name.ValueString()); err != nil && !errors.Is(err, api.ErrNotFound) {
		resp.Diagnostics.AddError("Disconnecting cluster "+m.Name.ValueString(), err.Error())
	}
}
