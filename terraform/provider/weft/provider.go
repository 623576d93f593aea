// Package weft is the Terraform provider: its configuration, resources
// (weft_token, weft_policy, weft_cluster_connection) and data sources
// (weft_nodes, weft_identities), all served by a seed's admin API.
package weft

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/terraform-plugin-framework/datasource"
	"github.com/hashicorp/terraform-plugin-framework/diag"
	"github.com/hashicorp/terraform-plugin-framework/provider"
	"github.com/hashicorp/terraform-plugin-framework/provider/schema"
	"github.com/hashicorp/terraform-plugin-framework/resource"
	"github.com/hashicorp/terraform-plugin-framework/types"

	"github.com/weftmesh/weft/agent/api"
	"github.com/weftmesh/weft/internal/netnsdial"
)

// Address is the provider's source address.
const Address = "registry.terraform.io/weftmesh/weft"

// CredentialsEnv names the credential file when credentials_file is not set.
const CredentialsEnv = "WEFT_ADMIN_CREDENTIALS"

// New returns the provider factory for providerserver.
func New(version string) func() provider.Provider {
	return func() provider.Provider { return &weftProvider{version: version} }
}

type weftProvider struct{ version string }

type providerModel struct {
	CredentialsFile  types.String `tfsdk:"credentials_file"`
	Server           types.String `tfsdk:"server"`
	NetworkNamespace types.String `tfsdk:"network_namespace"`
}

func (p *weftProvider) Metadata(_ context.Context, _ provider.MetadataRequest, resp *provider.MetadataResponse) {
	resp.TypeName = "weft"
	resp.Version = p.version
}

func (p *weftProvider) Schema(_ context.Context, _ provider.SchemaRequest, resp *provider.SchemaResponse) {
	resp.Schema = schema.Schema{
		Description: "Manages a Weft mesh through its seed's admin API (mTLS, an admin credential from 'meshctl admin credential create').",
		Attributes: map[string]schema.Attribute{
			"credentials_file": schema.StringAttribute{
				Optional:    true,
				Description: "Path of the admin credential file ('meshctl admin credential create NAME --out FILE' on the seed). Default: $" + CredentialsEnv + ". Read at the first API call, so the same apply may create it.",
			},
			"server": schema.StringAttribute{
				Optional:    true,
				Description: "host:port of the seed's admin API, instead of the one in the credential.",
			},
			"network_namespace": schema.StringAttribute{
				Optional:    true,
				Description: "Reach the seed from inside this network namespace: a name under /var/run/netns (a lab node's) or a path. Needs root.",
			},
		},
	}
}

// Client is what the resources get: the admin API client, made at the
// first call that needs it.
type Client struct {
	file, server, netns string
	once                sync.Once
	api                 *api.Client
	err                 error
}

func (p *weftProvider) Configure(ctx context.Context, req provider.ConfigureRequest, resp *provider.ConfigureResponse) {
	var m providerModel
	resp.Diagnostics.Append(req.Config.Get(ctx, &m)...)
	if resp.Diagnostics.HasError() {
		return
	}
	c := &Client{file: m.CredentialsFile.ValueString(), server: m.Server.ValueString(), netns: m.NetworkNamespace.ValueString()}
	if c.file == "" && m.CredentialsFile.IsNull() {
		c.file = os.Getenv(CredentialsEnv)
	}
	if c.netns != "" && !strings.Contains(c.netns, "/") {
		c.netns = filepath.Join("/var/run/netns", c.netns)
	}
	resp.ResourceData = c
	resp.DataSourceData = c
}

// API returns the admin client, reading the credential the first time.
func (c *Client) API() (*api.Client, error) {
	c.once.Do(func() { c.api, c.err = c.open() })
	return c.api, c.err
}

func (c *Client) open() (*api.Client, error) {
	if c.file == "" {
		return nil, fmt.Errorf("no admin credential: set credentials_file in the provider block or %s (make one on the seed with 'meshctl admin credential create NAME --out FILE')", CredentialsEnv)
	}
	cred, err := api.LoadAdminCredential(c.file)
	if err != nil {
		return nil, err
	}
	if !cred.ExpiresAt.IsZero() && time.Now().After(cred.ExpiresAt) {
		return nil, fmt.Errorf("admin credential %s (%s) expired at %s: make a new one with 'meshctl admin credential create'", c.file, cred.Name, cred.ExpiresAt.Format(time.RFC3339))
	}
	var dial api.Dialer
	if c.netns != "" {
		if _, err := os.Stat(c.netns); err != nil {
			return nil, fmt.Errorf("network_namespace: %w (a name under /var/run/netns or a path; is the lab up?)", err)
		}
		dial = netnsdial.Dialer(c.netns)
	}
	return api.NewAdminClient(cred, c.server, dial)
}

// clientFrom is the Configure step shared by resources and data sources.
func clientFrom(data any, diags *diag.Diagnostics) *Client {
	if data == nil {
		return nil // not configured yet (validation)
	}
	c, ok := data.(*Client)
	if !ok {
		diags.AddError("Unexpected provider data", fmt.Sprintf("got %T, want *weft.Client: a bug in the provider", data))
	}
	return c
}

// apiOrDiag returns the client, or adds an error to diags.
func apiOrDiag(c *Client, diags *diag.Diagnostics) *api.Client {
	if c == nil {
		diags.AddError("Provider not configured", "the weft provider has no configuration: a bug in the provider or Terraform")
		return nil
	}
	a, err := c.API()
	if err != nil {
		diags.AddError("Cannot use the Weft admin API", err.Error())
		return nil
	}
	return a
}

// requestContext bounds one API call.
func requestContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, 2*time.Minute)
}

func (p *weftProvider) Resources(context.Context) []func() resource.Resource {
	return []func() resource.Resource{newTokenResource, newPolicyResource, newClusterConnectionResource}
}

func (p *weftProvider) DataSources(context.Context) []func() datasource.DataSource {
	return []func() datasource.DataSource{newNodesDataSource, newIdentitiesDataSource}
}
