package cli

import (
	"encoding/json"
	"fmt"
	"os"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/weftmesh/weft/agent/api"
	"github.com/weftmesh/weft/internal/cliout"
)

// adminCredentialsFlag points mesh-wide commands at the seed's admin API
// (mTLS) instead of the local agent's socket.
const adminCredentialsFlag = "admin-credentials"

// adminCapable are the commands whose calls the admin API serves: given
// --admin-credentials (or WEFT_ADMIN_CREDENTIALS) they run from any
// machine that reaches the seed's join service, a laptop included.
var adminCapable = map[string]bool{
	"status": true, "token": true, "cluster": true, "nodes": true, "node": true,
	"identities": true, "policy": true,
}

// withAdminCredentials gives every command under cmd that talks to the
// agent the --admin-credentials flag, and loads the credential before the
// command runs, so a bad file fails before anything is sent.
func withAdminCredentials(cmd *cli.Command) {
	for _, sub := range cmd.Subcommands {
		withAdminCredentials(sub)
	}
	if commandFlag(cmd, "socket") == nil {
		return
	}
	cmd.Flags = append(cmd.Flags, &cli.PathFlag{
		Name:    adminCredentialsFlag,
		EnvVars: []string{"WEFT_ADMIN_CREDENTIALS"},
		Usage:   "talk to the seed's admin API with the credential `FILE` ('meshctl admin credential create') instead of the local agent",
	})
	before := cmd.Before
	cmd.Before = func(c *cli.Context) error {
		if before != nil {
			if err := before(c); err != nil {
				return err
			}
		}
		file := c.Path(adminCredentialsFlag)
		if file == "" {
			return nil
		}
		cred, err := api.LoadAdminCredential(file)
		if err != nil {
			return err
		}
		cl, err := api.NewAdminClient(cred, "", nil)
		if err != nil {
			return fmt.Errorf("--admin-credentials %s: %w", file, err)
		}
		if c.App.Metadata == nil {
			c.App.Metadata = map[string]any{}
		}
		c.App.Metadata[adminCredentialsFlag] = cl
		return nil
	}
}

func adminCommand() *cli.Command {
	return &cli.Command{
		Name:      "admin",
		Usage:     "make credentials for the seed's admin API",
		UsageText: `meshctl admin credential create NAME --out FILE [--ttl 720h] [--server HOST:PORT]`,
		Description: `The seed (the node 'meshctl up' made) serves an admin API over mTLS on its join
service port (51834): the mesh-wide commands (token, policy, cluster, nodes,
node, identities, status) and the Terraform provider use it from any machine
that reaches that port. Its credential is a client certificate of the mesh CA
made for it (organization weft:admins): node and cluster certificates are
refused. See docs/terraform.md.`,
		Subcommands: []*cli.Command{{
			Name:      "credential",
			Usage:     "make admin API credentials",
			UsageText: "meshctl admin credential create NAME --out FILE [--ttl 720h] [--server HOST:PORT]",
			Subcommands: []*cli.Command{{
				Name:      "create",
				Usage:     "make an admin API credential file (run as root on the seed)",
				UsageText: "meshctl admin credential create NAME --out FILE [--ttl 720h] [--server HOST:PORT] [-o table|json]",
				Description: `Writes FILE (mode 0600; - for stdout) holding the admin API's address, the
mesh CA and a client certificate with its key: whoever holds the file
administers the mesh until it expires, so keep it like a password. NAME names
the holder in the seed's log of admin requests. The certificate cannot be
revoked on its own: give it a short --ttl (1h to 8760h; to cut one off early,
make a new mesh CA). --server is the address the holder reaches the seed's
join service at (default: the one written into join tokens); it must be one
the service's certificate is valid for.

Examples:
  meshctl admin credential create alice --out alice.json --ttl 24h
  meshctl admin credential create terraform --out tf.json --server 198.51.100.7:51834
  meshctl --admin-credentials alice.json token create --labels app=web`,
				Flags: agentFlags(
					&cli.PathFlag{Name: "out", Usage: "`FILE` to write the credential to (refused if it exists; - for stdout)", Required: true},
					&cli.DurationFlag{Name: "ttl", Value: api.DefaultAdminCredentialTTL, Usage: "how long the credential is valid (1h to 8760h)"},
					&cli.StringFlag{Name: "server", Usage: "`HOST:PORT` the holder reaches the join service at (default: the address in join tokens)"},
				),
				Action: adminCredentialCreateAction,
			}},
		}},
	}
}

// adminCredentialInfo is what the command shows: never the key.
type adminCredentialInfo struct {
	Name      string    `json:"name"`
	Server    string    `json:"server"`
	ExpiresAt time.Time `json:"expiresAt"`
	File      string    `json:"file"`
}

func adminCredentialCreateAction(c *cli.Context) error {
	name, err := oneArg(c, "name")
	if err != nil {
		return err
	}
	ttl := c.Duration("ttl")
	if ttl < api.MinAdminCredentialTTL || ttl > api.MaxAdminCredentialTTL {
		return fmt.Errorf("--ttl %s is out of range: use 1h to 8760h", ttl)
	}
	out := c.Path("out")
	if out != "-" {
		if _, err := os.Lstat(out); err == nil {
			return fmt.Errorf("--out %s exists: choose another file or remove it first (a credential is never overwritten)", out)
		}
	}
	ctx, cancel := cmdContext(c)
	defer cancel()
	cred, err := agentClient(c).IssueAdminCredential(ctx, api.AdminCredentialRequest{Name: name, TTL: api.Duration(ttl), Server: c.String("server")})
	if err != nil {
		return fmt.Errorf("making the admin credential: %w", err)
	}
	data, err := json.MarshalIndent(cred, "", "  ")
	if err != nil {
		return err
	}
	data = append(data, '\n')
	if out == "-" {
		_, err := c.App.Writer.Write(data)
		return err
	}
	// O_EXCL: a file that appeared since the check is not overwritten.
	f, err := os.OpenFile(out, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("writing the credential: %w", err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		os.Remove(out)
		return fmt.Errorf("writing the credential to %s: %w", out, err)
	}
	if err := f.Close(); err != nil {
		os.Remove(out)
		return fmt.Errorf("writing the credential to %s: %w", out, err)
	}
	info := adminCredentialInfo{Name: cred.Name, Server: cred.Server, ExpiresAt: cred.ExpiresAt, File: out}
	return render(c, info, func() error {
		if err := cliout.Table(c.App.Writer, []string{"name", "server", "expires", "file"},
			[][]string{{info.Name, info.Server, info.ExpiresAt.Local().Format(time.RFC3339), info.File}}); err != nil {
			return err
		}
		_, err := fmt.Fprintf(c.App.Writer, "\nKeep %s secret. Use it with:\n\n  meshctl --admin-credentials %s nodes\n  WEFT_ADMIN_CREDENTIALS=%s meshctl token create\n", out, out, out)
		return err
	})
}
