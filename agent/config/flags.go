package config

import (
	"fmt"
	"io"
	"strings"

	"github.com/urfave/cli/v2"
)

// Flag names, shared with meshctl (which passes some of them to the agent
// it starts).
const (
	FlagConfig             = "config"
	FlagNodeName           = "node-name"
	FlagCluster            = "cluster"
	FlagClusterID          = "cluster-id"
	FlagLabels             = "labels"
	FlagStateDir           = "state-dir"
	FlagSocket             = "socket"
	FlagEtcdEndpoints      = "etcd-endpoints"
	FlagEtcdCA             = "etcd-ca"
	FlagEtcdCert           = "etcd-cert"
	FlagEtcdKey            = "etcd-key"
	FlagEtcdCAKey          = "etcd-ca-key"
	FlagLeaseTTL           = "lease-ttl"
	FlagEmbeddedEtcd       = "embedded-etcd"
	FlagEtcdDataDir        = "embedded-etcd-data-dir"
	FlagEtcdClientURL      = "embedded-etcd-client-url"
	FlagEtcdAdvertiseURL   = "embedded-etcd-advertise-client-url"
	FlagEtcdPeerURL        = "embedded-etcd-peer-url"
	FlagJoinListen         = "join-listen"
	FlagNodeCertValidity   = "node-cert-validity"
	FlagJoinAdvertise      = "join-advertise"
	FlagWGInterface        = "wg-interface"
	FlagWGPort             = "wg-port"
	FlagWGMode             = "wg-mode"
	FlagWGKeepalive        = "wg-keepalive"
	FlagUnderlayEndpoints  = "underlay-endpoints"
	FlagRelay              = "relay"
	FlagRelayAdvertise     = "relay-advertise"
	FlagMeshPool           = "mesh-pool"
	FlagNodePrefixLength   = "node-prefix-length"
	FlagBPFPinPath         = "bpf-pin-path"
	FlagLogFormat          = "log-format"
	FlagLogLevel           = "log-level"
	FlagMetricsAddress     = "metrics-address"
	FlagFlowBuffer         = "flow-buffer"
	FlagStrict             = "strict"
	FlagKubernetes         = "kubernetes"
	FlagKubeconfig         = "kubeconfig"
	FlagKubeAPIServer      = "kube-api-server"
	categoryKubernetes     = "Kubernetes node"
	envPrefix              = "WEFT_"
	categoryControlPlane   = "control plane"
	categoryEmbedded       = "embedded control plane (first node)"
	categorySeed           = "join service (the seed: the embedded etcd's node, or --etcd-ca-key)"
	categoryDataplane      = "tunnel and datapath"
	categoryObservability  = "logs and metrics"
	categoryNodeAndCluster = "node"
)

func env(flag string) []string {
	return []string{envPrefix + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))}
}

// Flags returns the agent's command-line flags. Each can also be given as
// an environment variable WEFT_<FLAG> (--wg-port is WEFT_WG_PORT). The
// defaults shown are the built-in ones; a value from the configuration file
// sits between them and the flag.
func Flags() []cli.Flag {
	d := Default()
	return []cli.Flag{
		&cli.PathFlag{Name: FlagConfig, EnvVars: env(FlagConfig), Usage: "YAML configuration `FILE`; flags and WEFT_* variables override it", Category: categoryNodeAndCluster},
		&cli.StringFlag{Name: FlagNodeName, EnvVars: env(FlagNodeName), Usage: "node `NAME`, unique in its cluster (default: the host name)", Category: categoryNodeAndCluster},
		&cli.StringFlag{Name: FlagCluster, EnvVars: env(FlagCluster), Value: d.Cluster, Usage: "`CLUSTER` this node belongs to", Category: categoryNodeAndCluster},
		&cli.IntFlag{Name: FlagClusterID, EnvVars: env(FlagClusterID), Usage: "cluster `ID` (1..4095) of a new cluster; default: the cluster record's, or the lowest free id", Category: categoryNodeAndCluster},
		&cli.StringFlag{Name: FlagLabels, EnvVars: env(FlagLabels), Usage: "labels of the node itself, `k=v,...`", Category: categoryNodeAndCluster},
		&cli.PathFlag{Name: FlagStateDir, EnvVars: env(FlagStateDir), Value: d.StateDir, Usage: "`DIR` for keys, credentials and embedded etcd data", Category: categoryNodeAndCluster},
		&cli.PathFlag{Name: FlagSocket, EnvVars: env(FlagSocket), Value: d.SocketPath, Usage: "unix socket `PATH` of the local API (mode 0600)", Category: categoryNodeAndCluster},

		&cli.StringSliceFlag{Name: FlagEtcdEndpoints, EnvVars: env(FlagEtcdEndpoints), Usage: "etcd client `URLS` (https://host:2379, comma-separated)", Category: categoryControlPlane},
		&cli.PathFlag{Name: FlagEtcdCA, EnvVars: env(FlagEtcdCA), Usage: "CA certificate `FILE` that signed the etcd servers' certificates", Category: categoryControlPlane},
		&cli.PathFlag{Name: FlagEtcdCert, EnvVars: env(FlagEtcdCert), Usage: "client certificate `FILE` for etcd", Category: categoryControlPlane},
		&cli.PathFlag{Name: FlagEtcdKey, EnvVars: env(FlagEtcdKey), Usage: "client key `FILE` for etcd", Category: categoryControlPlane},
		&cli.PathFlag{Name: FlagEtcdCAKey, EnvVars: env(FlagEtcdCAKey), Usage: "key `FILE` of the --etcd-ca CA, which the etcd trusts for client certificates: with an admin --etcd-cert, makes this agent the cluster's seed (join service, tokens, cluster connect)", Category: categoryControlPlane},
		&cli.DurationFlag{Name: FlagLeaseTTL, EnvVars: env(FlagLeaseTTL), Value: d.Etcd.LeaseTTL.D(), Usage: "how long a crashed node's records stay in etcd", Category: categoryControlPlane},

		&cli.BoolFlag{Name: FlagEmbeddedEtcd, EnvVars: env(FlagEmbeddedEtcd), Usage: "run a single-member etcd, the mesh CA and the join service in this agent (what meshctl up does)", Category: categoryEmbedded},
		&cli.PathFlag{Name: FlagEtcdDataDir, EnvVars: env(FlagEtcdDataDir), Usage: "embedded etcd data `DIR` (default: <state-dir>/etcd)", Category: categoryEmbedded},
		&cli.StringFlag{Name: FlagEtcdClientURL, EnvVars: env(FlagEtcdClientURL), Value: d.Etcd.Embedded.ClientURL, Usage: "`URL` the embedded etcd serves clients on", Category: categoryEmbedded},
		&cli.StringFlag{Name: FlagEtcdAdvertiseURL, EnvVars: env(FlagEtcdAdvertiseURL), Usage: "client `URL` given to joining nodes (default: the client URL)", Category: categoryEmbedded},
		&cli.StringFlag{Name: FlagEtcdPeerURL, EnvVars: env(FlagEtcdPeerURL), Value: d.Etcd.Embedded.PeerURL, Usage: "peer `URL` of the embedded etcd", Category: categoryEmbedded},
		&cli.StringFlag{Name: FlagJoinListen, EnvVars: env(FlagJoinListen), Value: d.Join.Listen, Usage: "`HOST:PORT` the join service listens on", Category: categorySeed},
		&cli.DurationFlag{Name: FlagNodeCertValidity, EnvVars: env(FlagNodeCertValidity), Usage: "lifetime of the node certificates the join service signs; agents renew theirs when a third is left (0: 30 days)", Category: categorySeed},
		&cli.StringFlag{Name: FlagJoinAdvertise, EnvVars: env(FlagJoinAdvertise), Usage: "`HOST:PORT` of the join service written into tokens (default: --join-listen)", Category: categorySeed},

		&cli.StringFlag{Name: FlagWGInterface, EnvVars: env(FlagWGInterface), Value: d.WireGuard.Interface, Usage: "WireGuard interface `NAME`", Category: categoryDataplane},
		&cli.IntFlag{Name: FlagWGPort, EnvVars: env(FlagWGPort), Value: d.WireGuard.ListenPort, Usage: "WireGuard UDP `PORT`", Category: categoryDataplane},
		&cli.StringFlag{Name: FlagWGMode, EnvVars: env(FlagWGMode), Value: d.WireGuard.Mode, Usage: "WireGuard implementation: auto, kernel or userspace", Category: categoryDataplane},
		&cli.DurationFlag{Name: FlagWGKeepalive, EnvVars: env(FlagWGKeepalive), Value: d.WireGuard.PersistentKeepalive.D(), Usage: "persistent keepalive towards peers (0 = off); keeps NAT mappings open", Category: categoryDataplane},
		&cli.StringSliceFlag{Name: FlagUnderlayEndpoints, EnvVars: env(FlagUnderlayEndpoints), Usage: "`IP:PORT` addresses peers use to reach this node (default: the default route's address)", Category: categoryDataplane},
		&cli.BoolFlag{Name: FlagRelay, EnvVars: env(FlagRelay), Usage: "serve as a relay for mesh nodes that cannot reach each other directly (it forwards their WireGuard packets, which it cannot read; docs/nat.md)", Category: categoryDataplane},
		&cli.StringFlag{Name: FlagRelayAdvertise, EnvVars: env(FlagRelayAdvertise), Usage: "`IP:PORT` the relay is announced at (default: the first underlay endpoint's address, port 51838)", Category: categoryDataplane},
		&cli.StringFlag{Name: FlagMeshPool, EnvVars: env(FlagMeshPool), Value: d.IPAM.MeshPool, Usage: "`CIDR` a new cluster's node CIDRs come from; default: the cluster record's, or the first free /16 of 100.64.0.0/10", Category: categoryDataplane},
		&cli.IntFlag{Name: FlagNodePrefixLength, EnvVars: env(FlagNodePrefixLength), Value: d.IPAM.NodePrefixLength, Usage: "prefix `LENGTH` of each node's CIDR", Category: categoryDataplane},
		&cli.PathFlag{Name: FlagBPFPinPath, EnvVars: env(FlagBPFPinPath), Value: d.BPF.PinPath, Usage: "bpffs `DIR` for this agent's pinned maps", Category: categoryDataplane},
		&cli.BoolFlag{Name: FlagStrict, EnvVars: env(FlagStrict), Usage: "strict mode: drop unencrypted traffic between mesh nodes' underlay addresses except WireGuard, the join service and etcd", Category: categoryDataplane},

		&cli.BoolFlag{Name: FlagKubernetes, EnvVars: env(FlagKubernetes), Usage: "run as a Kubernetes node's agent: pods through weft-cni, the Node's podCIDR as this node's CIDR, NetworkPolicies and WeftPolicies from the API server (in-cluster credentials unless --kubeconfig)", Category: categoryKubernetes},
		&cli.PathFlag{Name: FlagKubeconfig, EnvVars: env(FlagKubeconfig), Usage: "kubeconfig `FILE` for the API server (default: the pod's service account)", Category: categoryKubernetes},
		&cli.StringFlag{Name: FlagKubeAPIServer, EnvVars: env(FlagKubeAPIServer), Usage: "the API server's `URL` (https://IP:6443) with the service account, instead of the kubernetes Service", Category: categoryKubernetes},
		&cli.StringFlag{Name: FlagLogFormat, EnvVars: env(FlagLogFormat), Value: d.Log.Format, Usage: "log format: text or json", Category: categoryObservability},
		&cli.StringFlag{Name: FlagLogLevel, EnvVars: env(FlagLogLevel), Value: d.Log.Level, Usage: "log level: debug, info, warn or error", Category: categoryObservability},
		&cli.StringFlag{Name: FlagMetricsAddress, EnvVars: env(FlagMetricsAddress), Value: d.Metrics.Address, Usage: "`HOST:PORT` serving /metrics; the host \"mesh\" is the node's mesh address (empty: off)", Category: categoryObservability},
		&cli.IntFlag{Name: FlagFlowBuffer, EnvVars: env(FlagFlowBuffer), Value: d.Flows.Buffer, Usage: "how many recent flows to keep for meshctl observe (`N`)", Category: categoryObservability},
	}
}

// FromCLI builds the configuration: defaults, then the --config file, then
// every flag or WEFT_* variable that was set. It validates the result.
func FromCLI(c *cli.Context) (*Config, error) {
	cfg := Default()
	if path := c.Path(FlagConfig); path != "" {
		var err error
		if cfg, err = Load(path); err != nil {
			return nil, err
		}
	}
	if err := cfg.applyFlags(c); err != nil {
		return nil, err
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return cfg, nil
}

func (cfg *Config) applyFlags(c *cli.Context) error {
	setS := func(name string, dst *string) {
		if c.IsSet(name) {
			*dst = c.String(name)
		}
	}
	setI := func(name string, dst *int) {
		if c.IsSet(name) {
			*dst = c.Int(name)
		}
	}
	setD := func(name string, dst *Duration) {
		if c.IsSet(name) {
			*dst = Duration(c.Duration(name))
		}
	}
	setL := func(name string, dst *[]string) {
		if c.IsSet(name) {
			var out []string
			for _, v := range c.StringSlice(name) {
				if v = strings.TrimSpace(v); v != "" {
					out = append(out, v)
				}
			}
			*dst = out
		}
	}
	setS(FlagNodeName, &cfg.NodeName)
	setS(FlagCluster, &cfg.Cluster)
	setI(FlagClusterID, &cfg.ClusterID)
	if c.IsSet(FlagLabels) {
		l, err := ParseLabels(c.String(FlagLabels))
		if err != nil {
			return fmt.Errorf("%w: --%s: %v", ErrInvalid, FlagLabels, err)
		}
		cfg.Labels = l
	}
	setS(FlagStateDir, &cfg.StateDir)
	setS(FlagSocket, &cfg.SocketPath)
	setL(FlagEtcdEndpoints, &cfg.Etcd.Endpoints)
	setS(FlagEtcdCA, &cfg.Etcd.CAFile)
	setS(FlagEtcdCert, &cfg.Etcd.CertFile)
	setS(FlagEtcdKey, &cfg.Etcd.KeyFile)
	setS(FlagEtcdCAKey, &cfg.Etcd.CAKeyFile)
	setD(FlagLeaseTTL, &cfg.Etcd.LeaseTTL)
	if c.IsSet(FlagEmbeddedEtcd) {
		cfg.Etcd.Embedded.Enabled = c.Bool(FlagEmbeddedEtcd)
	}
	setS(FlagEtcdDataDir, &cfg.Etcd.Embedded.DataDir)
	setS(FlagEtcdClientURL, &cfg.Etcd.Embedded.ClientURL)
	setS(FlagEtcdAdvertiseURL, &cfg.Etcd.Embedded.AdvertiseClientURL)
	setS(FlagEtcdPeerURL, &cfg.Etcd.Embedded.PeerURL)
	setS(FlagJoinListen, &cfg.Join.Listen)
	setD(FlagNodeCertValidity, &cfg.Join.NodeCertValidity)
	setS(FlagJoinAdvertise, &cfg.Join.Advertise)
	setS(FlagWGInterface, &cfg.WireGuard.Interface)
	setI(FlagWGPort, &cfg.WireGuard.ListenPort)
	setS(FlagWGMode, &cfg.WireGuard.Mode)
	setD(FlagWGKeepalive, &cfg.WireGuard.PersistentKeepalive)
	setL(FlagUnderlayEndpoints, &cfg.Underlay.Endpoints)
	if c.IsSet(FlagRelay) {
		cfg.Relay.Enabled = c.Bool(FlagRelay)
	}
	setS(FlagRelayAdvertise, &cfg.Relay.Advertise)
	setS(FlagMeshPool, &cfg.IPAM.MeshPool)
	setI(FlagNodePrefixLength, &cfg.IPAM.NodePrefixLength)
	setS(FlagBPFPinPath, &cfg.BPF.PinPath)
	setS(FlagLogFormat, &cfg.Log.Format)
	setS(FlagLogLevel, &cfg.Log.Level)
	setS(FlagMetricsAddress, &cfg.Metrics.Address)
	setI(FlagFlowBuffer, &cfg.Flows.Buffer)
	if c.IsSet(FlagStrict) {
		cfg.Strict = c.Bool(FlagStrict)
	}
	if c.IsSet(FlagKubernetes) {
		cfg.Kubernetes.Enabled = c.Bool(FlagKubernetes)
	}
	setS(FlagKubeconfig, &cfg.Kubernetes.Kubeconfig)
	setS(FlagKubeAPIServer, &cfg.Kubernetes.APIServer)
	return nil
}

// ApplyArgs applies agent command-line flags (as weft-agent takes them)
// over c, then validates. meshctl join and up use it to fold the flags a
// user passes after `--` into the configuration file they write.
func (cfg *Config) ApplyArgs(args []string) error {
	var applyErr error
	app := &cli.App{
		Name:            "weft-agent",
		Flags:           withoutEnv(Flags()),
		HideHelp:        true,
		HideHelpCommand: true,
		Writer:          io.Discard,
		ErrWriter:       io.Discard,
		Action: func(c *cli.Context) error {
			if c.Args().Present() {
				return fmt.Errorf("unexpected argument %q", c.Args().First())
			}
			if c.IsSet(FlagConfig) {
				return fmt.Errorf("--%s cannot be passed here", FlagConfig)
			}
			applyErr = cfg.applyFlags(c)
			return nil
		},
	}
	if err := app.Run(append([]string{"weft-agent"}, args...)); err != nil {
		return fmt.Errorf("%w: agent flags %q: %v", ErrInvalid, strings.Join(args, " "), err)
	}
	if applyErr != nil {
		return applyErr
	}
	return cfg.Validate()
}

// withoutEnv returns flags that read only the command line: ApplyArgs folds
// the flags a user wrote after `--` into a configuration file, and WEFT_*
// variables that happen to be set in meshctl's environment must not slip in
// with them (they would overwrite what the join service answered, e.g. the
// node name its certificate carries). The agent itself still reads WEFT_*
// when it starts.
func withoutEnv(flags []cli.Flag) []cli.Flag {
	for _, f := range flags {
		switch f := f.(type) {
		case *cli.StringFlag:
			f.EnvVars = nil
		case *cli.PathFlag:
			f.EnvVars = nil
		case *cli.IntFlag:
			f.EnvVars = nil
		case *cli.BoolFlag:
			f.EnvVars = nil
		case *cli.DurationFlag:
			f.EnvVars = nil
		case *cli.StringSliceFlag:
			f.EnvVars = nil
		default:
			panic(fmt.Sprintf("config: flag type %T: teach withoutEnv to clear its environment variables", f))
		}
	}
	return flags
}
