package weft

import (
	"context"

	"github.com/hashicorp/terraform-plugin-framework/attr"
	"github.com/hashicorp/terraform-plugin-framework/datasource"
	"github.com/hashicorp/terraform-plugin-framework/datasource/schema"
	"github.com/hashicorp/terraform-plugin-framework/types"

	"github.com/weftmesh/weft/meshctl/spec"
)

type nodesDataSource struct{ client *Client }

func newNodesDataSource() datasource.DataSource { return &nodesDataSource{} }

type nodesModel struct {
	Cluster types.String `tfsdk:"cluster"`
	Nodes   []nodeModel  `tfsdk:"nodes"`
}

type nodeModel struct {
	Name         types.String `tfsdk:"name"`
	Cluster      types.String `tfsdk:"cluster"`
	MeshIP       types.String `tfsdk:"mesh_ip"`
	CIDRs        types.List   `tfsdk:"cidrs"`
	Endpoints    types.List   `tfsdk:"endpoints"`
	Labels       types.Map    `tfsdk:"labels"`
	PublicKey    types.String `tfsdk:"public_key"`
	AgentVersion types.String `tfsdk:"agent_version"`
}

func (d *nodesDataSource) Metadata(_ context.Context, req datasource.MetadataRequest, resp *datasource.MetadataResponse) {
	resp.TypeName = req.ProviderTypeName + "_nodes"
}

func (d *nodesDataSource) Schema(_ context.Context, _ datasource.SchemaRequest, resp *datasource.SchemaResponse) {
	str := func(desc string) schema.Attribute { return schema.StringAttribute{Computed: true, Description: desc} }
	resp.Schema = schema.Schema{
		Description: "The mesh's node records ('meshctl nodes'), sorted as the seed lists them.",
		Attributes: map[string]schema.Attribute{
			"cluster": schema.StringAttribute{Optional: true, Description: "Only this cluster's nodes."},
			"nodes": schema.ListNestedAttribute{Computed: true, NestedObject: schema.NestedAttributeObject{Attributes: map[string]schema.Attribute{
				"name":          str("Node name."),
				"cluster":       str("Its cluster."),
				"mesh_ip":       str("Its mesh address."),
				"cidrs":         schema.ListAttribute{Computed: true, ElementType: types.StringType, Description: "Ranges routed to it."},
				"endpoints":     schema.ListAttribute{Computed: true, ElementType: types.StringType, Description: "Its underlay ip:port endpoints."},
				"labels":        schema.MapAttribute{Computed: true, ElementType: types.StringType, Description: "Its labels."},
				"public_key":    str("Its WireGuard public key."),
				"agent_version": str("Its agent's version."),
			}}},
		},
	}
}

func (d *nodesDataSource) Configure(_ context.Context, req datasource.ConfigureRequest, resp *datasource.ConfigureResponse) {
	d.client = clientFrom(req.ProviderData, &resp.Diagnostics)
}

func (d *nodesDataSource) ValidateConfig(ctx context.Context, req datasource.ValidateConfigRequest, resp *datasource.ValidateConfigResponse) {
	var m nodesModel
	resp.Diagnostics.Append(req.Config.Get(ctx, &m)...)
	if resp.Diagnostics.HasError() || m.Cluster.IsUnknown() || m.Cluster.IsNull() {
		return
	}
	if err := spec.ClusterName(m.Cluster.ValueString(), false); err != nil {
		addFieldError(&resp.Diagnostics, err)
	}
}

func strList(ss []string) types.List {
	vs := make([]attr.Value, len(ss))
	for i, s := range ss {
		vs[i] = types.StringValue(s)
	}
	return types.ListValueMust(types.StringType, vs)
}

func (d *nodesDataSource) Read(ctx context.Context, req datasource.ReadRequest, resp *datasource.ReadResponse) {
	var m nodesModel
	resp.Diagnostics.Append(req.Config.Get(ctx, &m)...)
	if resp.Diagnostics.HasError() {
		return
	}
	a := apiOrDiag(d.client, &resp.Diagnostics)
	if a == nil {
		return
	}
	ctx, cancel := requestContext(ctx)
	defer cancel()
	nodes, err := a.Nodes(ctx)
	if err != nil {
		resp.Diagnostics.AddError("Listing nodes", err.Error())
		return
	}
	m.Nodes = []nodeModel{}
	for _, n := range nodes {
		if !m.Cluster.IsNull() && n.Cluster != m.Cluster.ValueString() {
			continue
		}
		labels := make(map[string]attr.Value, len(n.Labels))
		for k, v := range n.Labels {
			labels[k] = types.StringValue(v)
		}
		m.Nodes = append(m.Nodes, nodeModel{
			Name: types.StringValue(n.Name), Cluster: types.StringValue(n.Cluster), MeshIP: types.StringValue(n.MeshIP),
			CIDRs: strList(n.CIDRs), Endpoints: strList(n.Endpoints), Labels: types.MapValueMust(types.StringType, labels),
			PublicKey: types.StringValue(n.PublicKey), AgentVersion: types.StringValue(n.AgentVersion),
		})
	}
	resp.Diagnostics.Append(resp.State.Set(ctx, &m)...)
}

type identitiesDataSource struct{ client *Client }

func newIdentitiesDataSource() datasource.DataSource { return &identitiesDataSource{} }

type identitiesModel struct {
	Identities []identityModel `tfsdk:"identities"`
}

type identityModel struct {
	ID        types.Int64 `tfsdk:"id"`
	Labels    types.List  `tfsdk:"labels"`
	Reserved  types.Bool  `tfsdk:"reserved"`
	Endpoints types.Int64 `tfsdk:"endpoints"`
}

func (d *identitiesDataSource) Metadata(_ context.Context, req datasource.MetadataRequest, resp *datasource.MetadataResponse) {
	resp.TypeName = req.ProviderTypeName + "_identities"
}

func (d *identitiesDataSource) Schema(_ context.Context, _ datasource.SchemaRequest, resp *datasource.SchemaResponse) {
	resp.Schema = schema.Schema{
		Description: "The mesh's security identities ('meshctl identities').",
		Attributes: map[string]schema.Attribute{
			"identities": schema.ListNestedAttribute{Computed: true, NestedObject: schema.NestedAttributeObject{Attributes: map[string]schema.Attribute{
				"id":        schema.Int64Attribute{Computed: true, Description: "Numeric identity."},
				"labels":    schema.ListAttribute{Computed: true, ElementType: types.StringType, Description: "Its labels, source:key=value."},
				"reserved":  schema.BoolAttribute{Computed: true, Description: "A built-in identity (host, world, ...)."},
				"endpoints": schema.Int64Attribute{Computed: true, Description: "How many endpoints carry it."},
			}}},
		},
	}
}

func (d *identitiesDataSource) Configure(_ context.Context, req datasource.ConfigureRequest, resp *datasource.ConfigureResponse) {
	d.client = clientFrom(req.ProviderData, &resp.Diagnostics)
}

func (d *identitiesDataSource) Read(ctx context.Context, _ datasource.ReadRequest, resp *datasource.ReadResponse) {
	a := apiOrDiag(d.client, &resp.Diagnostics)
	if a == nil {
		return
	}
	ctx, cancel := requestContext(ctx)
	defer cancel()
	ids, err := a.Identities(ctx)
	if err != nil {
		resp.Diagnostics.AddError("Listing identities", err.Error())
		return
	}
	m := identitiesModel{Identities: []identityModel{}}
	for _, id := range ids {
		m.Identities = append(m.Identities, identityModel{
			ID: types.Int64Value(int64(id.ID)), Labels: strList(id.Labels),
			Reserved: types.BoolValue(id.Reserved), Endpoints: types.Int64Value(int64(id.Endpoints)),
		})
	}
	resp.Diagnostics.Append(resp.State.Set(ctx, &m)...)
}
