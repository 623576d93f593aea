package weft

import (
	"context"
	"errors"
	"fmt"

	"github.com/hashicorp/terraform-plugin-framework/diag"
	"github.com/hashicorp/terraform-plugin-framework/path"
	"github.com/hashicorp/terraform-plugin-framework/resource"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/planmodifier"
	"github.com/hashicorp/terraform-plugin-framework/resource/schema/stringplanmodifier"
	"github.com/hashicorp/terraform-plugin-framework/types"

	"github.com/weftmesh/weft/agent/api"
	"github.com/weftmesh/weft/meshctl/spec"
)

type policyResource struct{ client *Client }

func newPolicyResource() resource.Resource { return &policyResource{} }

type policyModel struct {
	ID       types.String `tfsdk:"id"`
	Name     types.String `tfsdk:"name"`
	Document types.String `tfsdk:"document"`
	Revision types.Int64  `tfsdk:"revision"`
}

func (r *policyResource) Metadata(_ context.Context, req resource.MetadataRequest, resp *resource.MetadataResponse) {
	resp.TypeName = req.ProviderTypeName + "_policy"
}

func (r *policyResource) Schema(_ context.Context, _ resource.SchemaRequest, resp *resource.SchemaResponse) {
	resp.Schema = schema.Schema{
		Description: "A policy ('meshctl policy apply'): one document, YAML or JSON (yamlencode/jsonencode of an HCL object), whose metadata.name is name. Import by name.",
		Attributes: map[string]schema.Attribute{
			"id": schema.StringAttribute{Computed: true, Description: "The policy's name.",
				PlanModifiers: []planmodifier.String{stringplanmodifier.UseStateForUnknown()}},
			"name": schema.StringAttribute{Required: true, Description: "The policy's name; the document's metadata.name must be the same.",
				PlanModifiers: []planmodifier.String{stringplanmodifier.RequiresReplace()}},
			"document": schema.StringAttribute{Required: true, Description: "The policy document (apiVersion weft.dev/v1, kind Policy), YAML or JSON."},
			// No UseStateForUnknown: an update stores a new revision.
			"revision": schema.Int64Attribute{Computed: true, Description: "The etcd revision the policy is stored at."},
		},
	}
}

func (r *policyResource) Configure(_ context.Context, req resource.ConfigureRequest, resp *resource.ConfigureResponse) {
	r.client = clientFrom(req.ProviderData, &resp.Diagnostics)
}

// filename is how messages name the document: "document:LINE: reason".
const filename = "document"

func (r *policyResource) ValidateConfig(ctx context.Context, req resource.ValidateConfigRequest, resp *resource.ValidateConfigResponse) {
	var m policyModel
	resp.Diagnostics.Append(req.Config.Get(ctx, &m)...)
	if resp.Diagnostics.HasError() || m.Name.IsUnknown() || m.Document.IsUnknown() {
		return
	}
	if _, err := spec.Policy(filename, m.Name.ValueString(), m.Document.ValueString()); err != nil {
		resp.Diagnostics.AddAttributeError(path.Root("document"), "Invalid policy document", "policy not applied, nothing changed: "+err.Error())
	}
}

func (r *policyResource) apply(ctx context.Context, m *policyModel, diags *diag.Diagnostics) {
	a := apiOrDiag(r.client, diags)
	if a == nil {
		return
	}
	ctx, cancel := requestContext(ctx)
	defer cancel()
	res, err := a.ApplyPolicy(ctx, api.ApplyPolicyRequest{Filename: "weft_policy." + m.Name.ValueString(), Document: m.Document.ValueString()})
	if err != nil {
		diags.AddError("Applying policy "+m.Name.ValueString(), "policy not applied, nothing changed: "+err.Error())
		return
	}
	m.ID = m.Name
	m.Revision = types.Int64Value(res.Revision)
}

func (r *policyResource) Create(ctx context.Context, req resource.CreateRequest, resp *resource.CreateResponse) {
	var m policyModel
	resp.Diagnostics.Append(req.Plan.Get(ctx, &m)...)
	if resp.Diagnostics.HasError() {
		return
	}
	a := apiOrDiag(r.client, &resp.Diagnostics)
	if a == nil {
		return
	}
	// Terraform would otherwise take over (and on destroy delete) a
	// policy someone else stored.
	rctx, cancel := requestContext(ctx)
	_, err := a.GetPolicy(rctx, m.Name.ValueString())
	cancel()
	switch {
	case err == nil:
		resp.Diagnostics.AddError("Policy "+m.Name.ValueString()+" already exists",
			fmt.Sprintf("the mesh already stores a policy named %q: import it (terraform import weft_policy.NAME %s) or give this one another name", m.Name.ValueString(), m.Name.ValueString()))
		return
	case !errors.Is(err, api.ErrNotFound):
		resp.Diagnostics.AddError("Reading policy "+m.Name.ValueString(), err.Error())
		return
	}
	r.apply(ctx, &m, &resp.Diagnostics)
	if resp.Diagnostics.HasError() {
		return
	}
	resp.Diagnostics.Append(resp.State.Set(ctx, &m)...)
}

// Read compares the stored document with the state's by their parsed
// forms: a document stored with other formatting is no change, another
// policy under the name is drift and shows in the plan.
func (r *policyResource) Read(ctx context.Context, req resource.ReadRequest, resp *resource.ReadResponse) {
	var m policyModel
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
	p, err := a.GetPolicy(ctx, m.Name.ValueString())
	if errors.Is(err, api.ErrNotFound) {
		resp.State.RemoveResource(ctx)
		return
	}
	if err != nil {
		resp.Diagnostics.AddError("Reading policy "+m.Name.ValueString(), err.Error())
		return
	}
	if !samePolicyText(m.Name.ValueString(), m.Document.ValueString(), p.Document) {
		m.Document = types.StringValue(p.Document)
	}
	m.ID = types.StringValue(p.Name)
	m.Revision = types.Int64Value(p.Revision)
	resp.Diagnostics.Append(resp.State.Set(ctx, &m)...)
}

// samePolicyText: both documents parse and say the same.
func samePolicyText(name, a, b string) bool {
	if a == b {
		return true
	}
	pa, err1 := spec.Policy(filename, name, a)
	pb, err2 := spec.Policy(filename, name, b)
	return err1 == nil && err2 == nil && spec.SamePolicy(pa, pb)
}

func (r *policyResource) Update(ctx context.Context, req resource.UpdateRequest, resp *resource.UpdateResponse) {
	var m policyModel
	resp.Diagnostics.Append(req.Plan.Get(ctx, &m)...)
	if resp.Diagnostics.HasError() {
		return
	}
	r.apply(ctx, &m, &resp.Diagnostics)
	if resp.Diagnostics.HasError() {
		return
	}
	resp.Diagnostics.Append(resp.State.Set(ctx, &m)...)
}

func (r *policyResource) Delete(ctx context.Context, req resource.DeleteRequest, resp *resource.DeleteResponse) {
	var m policyModel
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
	if err := a.DeletePolicy(ctx, m.Name.ValueString()); err != nil && !errors.Is(err, api.ErrNotFound) {
		resp.Diagnostics.AddError("Deleting policy "+m.Name.ValueString(), err.Error())
	}
}

func (r *policyResource) ImportState(ctx context.Context, req resource.ImportStateRequest, resp *resource.ImportStateResponse) {
	if err := spec.PolicyName(req.ID); err != nil {
		resp.Diagnostics.AddError("Invalid policy name to import", err.Error())
		return
	}
	resp.Diagnostics.Append(resp.State.SetAttribute(ctx, path.Root("name"), req.ID)...)
	resp.Diagnostics.Append(resp.State.SetAttribute(ctx, path.Root("id"), req.ID)...)
}
