// Package config holds the agent's configuration: what a node is called,
// which mesh it belongs to, how it reaches etcd and its peers, and the
// workloads it declares. A configuration comes from a YAML file, then
// environment variables (WEFT_...), then command-line flags, each layer
// overriding the one before; Validate refuses an inconsistent result with
// an error that names the field, so the agent never starts half-configured.
package config

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/weftmesh/weft/identity"
	"github.com/weftmesh/weft/internal/names"
)

// Defaults used when neither the file, the environment nor a flag says
// otherwise. They are exported so meshctl and the docs quote the same values.
const (
	DefaultCluster        = "default"
	DefaultStateDir       = "/var/lib/weft"
	DefaultSocketPath     = "/run/weft/agent.sock"
	DefaultInterface      = "weft0"
	DefaultListenPort     = 51833
	DefaultKeepalive      = 25 * time.Second
	MinRotateEvery        = time.Minute
	DefaultNodePrefixLen  = 24
	DefaultBPFPinPath     = "/sys/fs/bpf/weft"
	DefaultLogFormat      = "text"
	DefaultLogLevel       = "info"
	DefaultMetricsAddress = "mesh:9962" // host "mesh": the node's mesh address
	DefaultFlowBuffer     = 8192
	DefaultNodeLeaseTTL   = 15 * time.Second
	DefaultEtcdClientURL  = "https://127.0.0.1:2379"
	DefaultEtcdPeerURL    = "https://127.0.0.1:2380"
	DefaultJoinListen     = ":51834"
)

// DefaultMeshPool is the pool the first cluster of a mesh gets (the first
// free /16 of 100.64.0.0/10). meshctl wrote it as ipam.meshPool into every
// configuration before a cluster's pool came from its record, so the agent
// takes it as a request only for a new cluster (see agent/cidrs.go).
const DefaultMeshPool = "100.64.0.0/16"

// ErrInvalid is wrapped by every validation error, so callers can tell a
// bad configuration (exit and tell the user) from an I/O failure.
var ErrInvalid = errors.New("config: invalid configuration")

// Config is the whole agent configuration. The JSON names are the YAML
// keys of the configuration file (sigs.k8s.io/yaml goes through JSON).
type Config struct {
	// NodeName names this node in the mesh; unique within its cluster.
	// Defaults to the host name.
	NodeName string `json:"nodeName,omitempty"`
	// Cluster is the cluster this node belongs to.
	Cluster string `json:"cluster,omitempty"`
	// ClusterID is the cluster's number (1..4095) asked for when the
	// agent registers a cluster that does not exist yet; 0 takes the
	// existing record's id, or the lowest free one for a new cluster. An
	// id that is not the existing record's stops the agent, naming both.
	ClusterID int `json:"clusterID,omitempty"`
	// Labels are the labels of the node itself (its host endpoint), as
	// key=value with an optional source prefix (vm:app=db).
	Labels map[string]string `json:"labels,omitempty"`
	// StateDir keeps what must survive restarts: the WireGuard private
	// key, credentials from join, the mesh CA and embedded etcd data.
	StateDir string `json:"stateDir,omitempty"`
	// SocketPath is the local API's unix socket (root only).
	SocketPath string `json:"socketPath,omitempty"`
	// Strict drops unencrypted traffic between mesh nodes' underlay
	// addresses, except WireGuard, the join service and etcd
	// (docs/datapath.md, "Strict mode").
	Strict bool `json:"strict,omitempty"`

	Etcd      Etcd      `json:"etcd,omitempty"`
	WireGuard WireGuard `json:"wireguard,omitempty"`
	Underlay  Underlay  `json:"underlay,omitempty"`
	// Relay makes this node a relay for mesh nodes that cannot reach
	// each other directly (docs/nat.md).
	Relay   Relay      `json:"relay,omitempty"`
	IPAM    IPAM       `json:"ipam,omitempty"`
	BPF     BPF        `json:"bpf,omitempty"`
	Log     Log        `json:"log,omitempty"`
	Metrics Metrics    `json:"metrics,omitempty"`
	Flows   Flows      `json:"flows,omitempty"`
	Join    JoinServer `json:"join,omitempty"`
	// Kubernetes makes the agent a Kubernetes node's (docs/kubernetes.md).
	Kubernetes Kubernetes `json:"kubernetes,omitempty"`
	// Workloads are network namespaces this node runs as mesh endpoints
	// (the same as `meshctl endpoint add`, but declared).
	Workloads []Workload `json:"workloads,omitempty"`
}

// Kubernetes is the agent's Kubernetes mode: its workloads are the pods
// weft-cni connects, its CIDR is its Node's podCIDR, and NetworkPolicies
// and WeftPolicies come from the API server. The node name must be the
// Kubernetes Node's name.
type Kubernetes struct {
	Enabled bool `json:"enabled,omitempty"`
	// Kubeconfig is a kubeconfig file; empty means in-cluster credentials
	// (the DaemonSet pod's service account).
	Kubeconfig string `json:"kubeconfig,omitempty"`
	// APIServer is the API server's URL (https://10.0.0.1:6443), used with
	// the pod's service account instead of the kubernetes Service: in
	// primary mode nothing may route Service addresses before the CNI
	// runs (no kube-proxy yet), so the agent goes to the API server
	// directly.
	APIServer string `json:"apiServer,omitempty"`
	// HostCgroupRoot is where the DaemonSet mounts the node's
	// /sys/fs/cgroup: the userspace WireGuard helper moves out of the pod's
	// cgroups through it, so it survives a restart of the agent's pod.
	HostCgroupRoot string `json:"hostCgroupRoot,omitempty"`
}

// Etcd says how the agent reaches the control plane: an existing etcd
// cluster (Endpoints + TLS files) or the embedded single-member etcd.
type Etcd struct {
	Endpoints []string `json:"endpoints,omitempty"`
	CAFile    string   `json:"caFile,omitempty"`
	CertFile  string   `json:"certFile,omitempty"`
	KeyFile   string   `json:"keyFile,omitempty"`
	// CAKeyFile is the private key of CAFile's CA, which the existing etcd
	// trusts for client certificates. With it (and an admin CertFile) the
	// agent is its cluster's seed, as the embedded node is: it runs the
	// join service, signs the joining nodes' certificates and holds the
	// cluster API (tokens, cluster connect). docs/clusters.md, "Existing
	// etcd clusters".
	CAKeyFile string `json:"caKeyFile,omitempty"`
	// LeaseTTL is how long the node's records outlive a crashed agent.
	LeaseTTL Duration     `json:"leaseTTL,omitempty"`
	Embedded EmbeddedEtcd `json:"embedded,omitempty"`
}

// EmbeddedEtcd configures the single-member etcd the first node of a mesh
// runs (meshctl up). Its TLS material comes from the mesh CA in StateDir.
type EmbeddedEtcd struct {
	Enabled bool `json:"enabled,omitempty"`
	// DataDir defaults to <stateDir>/etcd.
	DataDir string `json:"dataDir,omitempty"`
	// ClientURL is where etcd listens for clients (https only).
	ClientURL string `json:"clientURL,omitempty"`
	// AdvertiseClientURL is the client URL other nodes are given; it
	// defaults to ClientURL and must not be a wildcard address.
	AdvertiseClientURL string `json:"advertiseClientURL,omitempty"`
	PeerURL            string `json:"peerURL,omitempty"`
	// RBAC turns on etcd's authentication with per-node roles: the admin
	// certificate is etcd root, each joined node's certificate writes only
	// its own keys (docs/security.md). `meshctl up --rbac` sets it. Off,
	// every certificate of the mesh CA is etcd root. Once on, etcd keeps
	// authentication on in its data even if this is turned off again.
	RBAC bool `json:"rbac,omitempty"`
}

// JoinServer configures the join service, which runs next to the mesh CA
// (on the node that runs the embedded etcd, or the one given
// etcd.caKeyFile).
type JoinServer struct {
	// Listen is the address the join service binds (host:port).
	Listen string `json:"listen,omitempty"`
	// Advertise is the host:port written into join tokens; it defaults to
	// Listen when that has a specific host.
	Advertise string `json:"advertise,omitempty"`
	// Server is, on a joined node, the join service it joined through
	// (host:port, from the token): the node asks it, with its own
	// certificate, for the writes its etcd role does not allow (new
	// identities, its CIDR). Empty: the host of the first etcd endpoint,
	// port 51834.
	Server string `json:"server,omitempty"`
	// NodeCertValidity is how long the node certificates this join service
	// signs are valid (at join and at each renewal); 0 means 30 days.
	// Agents renew theirs when a third of it is left.
	NodeCertValidity Duration `json:"nodeCertValidity,omitempty"`
}

// WireGuard configures the node's tunnel device.
type WireGuard struct {
	Interface  string `json:"interface,omitempty"`
	ListenPort int    `json:"listenPort,omitempty"`
	// Mode is auto (kernel when available, else userspace), kernel or
	// userspace.
	Mode string `json:"mode,omitempty"`
	// PersistentKeepalive keeps NAT mappings open for nodes behind NAT.
	PersistentKeepalive Duration `json:"persistentKeepalive,omitempty"`
	// RotateEvery rotates the WireGuard key at this interval, without
	// interrupting traffic (docs/tunnel.md); 0 (the default) never rotates
	// on its own, `meshctl rotate-key` still does.
	RotateEvery Duration `json:"rotateEvery,omitempty"`
}

// Underlay lists the addresses other nodes use to reach this one.
type Underlay struct {
	// Endpoints are ip:port pairs announced to peers; empty means the
	// agent announces the address of its default route and ListenPort.
	Endpoints []string `json:"endpoints,omitempty"`
}

// Relay configures this node's relay (docs/nat.md). Any node with an
// address the others reach can be one; it forwards their WireGuard
// packets, which it cannot read, and only for mesh nodes.
type Relay struct {
	// Enabled serves the relay and advertises it in the node record.
	Enabled bool `json:"enabled,omitempty"`
	// Port is the relay's UDP port (default 51838).
	Port int `json:"port,omitempty"`
	// Advertise is the ip:port announced to the mesh; default: the
	// address of the first underlay endpoint with Port.
	Advertise string `json:"advertise,omitempty"`
	// RateBytesPerSecond bounds what each node may send through the relay
	// (default 256 MiB/s); the excess is dropped.
	RateBytesPerSecond int64 `json:"rateBytesPerSecond,omitempty"`
}

// Relay defaults.
const (
	DefaultRelayPort = 51838
	// DefaultRelayClientPort is where a node's relay client listens (relays
	// answer to it); DefaultPathProbePort answers and sends the direct-path
	// checks of relayed pairs. Fixed, so strict mode can let them through.
	DefaultRelayClientPort = 51839
	DefaultPathProbePort   = 51840
	DefaultRelayRate       = 256 << 20
)

// IPAM configures where a VM's CIDR comes from.
type IPAM struct {
	// MeshPool is the cluster's pool of node CIDRs asked for when the
	// agent registers the cluster; empty takes the existing record's, or
	// the first free /16 of 100.64.0.0/10 for a new cluster (a cluster
	// made by 'meshctl token create --cluster' has its record already).
	MeshPool string `json:"meshPool,omitempty"`
	// NodePrefixLength is the size of the CIDR each node takes from it.
	NodePrefixLength int `json:"nodePrefixLength,omitempty"`
}

// BPF configures the datapath.
type BPF struct {
	// PinPath is the bpffs directory holding this agent's pinned maps;
	// several agents on one kernel (the lab) each need their own.
	PinPath string `json:"pinPath,omitempty"`
}

// Log configures the agent's slog output.
type Log struct {
	Format string `json:"format,omitempty"` // text or json
	Level  string `json:"level,omitempty"`  // debug, info, warn, error
}

// Metrics configures the Prometheus endpoint.
type Metrics struct {
	// Address serves /metrics; empty disables it. The host "mesh" means
	// the node's mesh address.
	Address string `json:"address,omitempty"`
	// Allow lists further CIDRs that may read /metrics. Without it only
	// the mesh's nodes (their mesh addresses) and this node's loopback
	// may: a workload on a node must not read the node's counters.
	Allow []string `json:"allow,omitempty"`
}

// Flows configures the flow records `meshctl observe` reads.
type Flows struct {
	// Buffer is how many recent flows the agent keeps in memory.
	Buffer int `json:"buffer,omitempty"`
}

// Workload is a network namespace the agent makes a mesh endpoint.
type Workload struct {
	// Netns is the name of the namespace (as in `ip netns`); it also names
	// the endpoint.
	Netns  string            `json:"netns"`
	Labels map[string]string `json:"labels,omitempty"`
}

// Default returns the configuration used when nothing else is given.
func Default() *Config {
	host, _ := os.Hostname()
	return &Config{
		NodeName:   strings.ToLower(host),
		Cluster:    DefaultCluster,
		StateDir:   DefaultStateDir,
		SocketPath: DefaultSocketPath,
		Etcd: Etcd{
			LeaseTTL: Duration(DefaultNodeLeaseTTL),
			Embedded: EmbeddedEtcd{ClientURL: DefaultEtcdClientURL, PeerURL: DefaultEtcdPeerURL},
		},
		WireGuard: WireGuard{
			Interface:           DefaultInterface,
			ListenPort:          DefaultListenPort,
			Mode:                "auto",
			PersistentKeepalive: Duration(DefaultKeepalive),
		},
		IPAM:       IPAM{NodePrefixLength: DefaultNodePrefixLen},
		BPF:        BPF{PinPath: DefaultBPFPinPath},
		Log:        Log{Format: DefaultLogFormat, Level: DefaultLogLevel},
		Metrics:    Metrics{Address: DefaultMetricsAddress},
		Flows:      Flows{Buffer: DefaultFlowBuffer},
		Join:       JoinServer{Listen: DefaultJoinListen},
		Kubernetes: Kubernetes{HostCgroupRoot: "/host/sys/fs/cgroup"},
	}
}

// Load reads a YAML configuration file over the defaults. Unknown keys are
// refused: a misspelt key silently ignored is a misconfigured node.
func Load(path string) (*Config, error) {
	c := Default()
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading configuration file: %w", err)
	}
	if err := c.merge(data); err != nil {
		return nil, fmt.Errorf("configuration file %s: %w", path, err)
	}
	return c, nil
}

// Parse reads YAML configuration over the defaults (Load without a file).
func Parse(data []byte) (*Config, error) {
	c := Default()
	if err := c.merge(data); err != nil {
		return nil, err
	}
	return c, nil
}

func (c *Config) merge(data []byte) error {
	if err := checkKeyCase(data); err != nil {
		return err
	}
	if err := yaml.UnmarshalStrict(data, c); err != nil {
		return fmt.Errorf("%w: %s", ErrInvalid, describeYAMLError(data, err))
	}
	return nil
}

// Marshal renders the configuration as YAML (meshctl join writes the file
// the agent reads back).
func (c *Config) Marshal() ([]byte, error) { return yaml.Marshal(c) }

// EtcdDataDir is where the embedded etcd keeps its data.
func (c *Config) EtcdDataDir() string {
	if c.Etcd.Embedded.DataDir != "" {
		return c.Etcd.Embedded.DataDir
	}
	return filepath.Join(c.StateDir, "etcd")
}

// PKIDir is where the mesh CA and the node's credentials live.
func (c *Config) PKIDir() string { return filepath.Join(c.StateDir, "pki") }

// EtcdClientEndpoints are the endpoints the agent dials: the configured
// ones, or the embedded server's advertised client URL.
func (c *Config) EtcdClientEndpoints() []string {
	if len(c.Etcd.Endpoints) > 0 || !c.Etcd.Embedded.Enabled {
		return c.Etcd.Endpoints
	}
	return []string{c.embeddedAdvertiseURL()}
}

func (c *Config) embeddedAdvertiseURL() string {
	if c.Etcd.Embedded.AdvertiseClientURL != "" {
		return c.Etcd.Embedded.AdvertiseClientURL
	}
	return c.Etcd.Embedded.ClientURL
}

// JoinServer is the join service a joined node asks for the writes its
// etcd role does not allow: join.server, else the host of the first etcd
// endpoint at the default join port.
func (c *Config) JoinServer() string {
	if c.Join.Server != "" {
		return c.Join.Server
	}
	if len(c.Etcd.Endpoints) == 0 {
		return ""
	}
	u, err := url.Parse(c.Etcd.Endpoints[0])
	if err != nil || u.Hostname() == "" {
		return ""
	}
	_, port, _ := net.SplitHostPort(DefaultJoinListen)
	return net.JoinHostPort(u.Hostname(), port)
}

// JoinAdvertise is the join service address written into tokens.
func (c *Config) JoinAdvertise() string {
	if c.Join.Advertise != "" {
		return c.Join.Advertise
	}
	return c.Join.Listen
}

// validateJoinService checks the settings of a seed's join service.
func (c *Config) validateJoinService(bad func(field, format string, args ...any)) {
	if err := checkHostPort(c.Join.Listen); err != nil {
		bad("join.listen", "%v", err)
	}
	if v := c.Join.NodeCertValidity.D(); v != 0 && (v < 30*time.Second || v > 365*24*time.Hour) {
		bad("join.nodeCertValidity", "%v: use 30s to 8760h (0: 30 days)", v)
	}
	if c.Join.Advertise != "" {
		if err := checkHostPort(c.Join.Advertise); err != nil {
			bad("join.advertise", "%v", err)
		}
	}
}

// Seed reports whether this agent is its cluster's seed: the one holding
// the CA key, running the join service and the cluster API.
func (c *Config) Seed() bool {
	return c.Etcd.Embedded.Enabled && len(c.Etcd.Endpoints) == 0 || c.Etcd.CAKeyFile != ""
}

var ifnameRE = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,15}$`)

// ValidateName checks a node, cluster or workload name against the mesh's
// one name rule (internal/names), the rule kvstore applies to the keys the
// names end up in.
func ValidateName(kind, name string) error { return names.Validate(kind, name) }

// Validate checks the whole configuration and reports every problem at
// once, each naming its field, so one edit fixes the file.
func (c *Config) Validate() error {
	var errs []string
	bad := func(field, format string, args ...any) {
		errs = append(errs, field+": "+fmt.Sprintf(format, args...))
	}
	if err := ValidateName("node", c.NodeName); err != nil {
		bad("nodeName", "%v", err)
	}
	if err := ValidateName("cluster", c.Cluster); err != nil {
		bad("cluster", "%v", err)
	}
	if c.ClusterID < 0 || c.ClusterID > identity.MaxClusterID {
		bad("clusterID", "%d is out of range: use 1..%d (0 = the existing cluster's id, or the lowest free one)", c.ClusterID, identity.MaxClusterID)
	}
	if err := ValidateLabels(c.Labels); err != nil {
		bad("labels", "%v", err)
	}
	if c.StateDir == "" || !filepath.IsAbs(c.StateDir) {
		bad("stateDir", "%q must be an absolute path", c.StateDir)
	}
	if c.SocketPath == "" || !filepath.IsAbs(c.SocketPath) {
		bad("socketPath", "%q must be an absolute path", c.SocketPath)
	} else if len(c.SocketPath) > 107 {
		bad("socketPath", "%q is longer than the 107 bytes a unix socket path may have", c.SocketPath)
	}

	e := c.Etcd
	switch {
	case e.Embedded.Enabled:
		for field, u := range map[string]string{"etcd.embedded.clientURL": e.Embedded.ClientURL, "etcd.embedded.peerURL": e.Embedded.PeerURL} {
			if err := checkHTTPSURL(u); err != nil {
				bad(field, "%v", err)
			}
		}
		if e.Embedded.AdvertiseClientURL != "" {
			if err := checkHTTPSURL(e.Embedded.AdvertiseClientURL); err != nil {
				bad("etcd.embedded.advertiseClientURL", "%v", err)
			}
		}
		if u, err := url.Parse(c.embeddedAdvertiseURL()); err == nil && isWildcardHost(u.Hostname()) {
			bad("etcd.embedded.advertiseClientURL", "the client URL %q listens on a wildcard address: set an address other nodes can reach", c.embeddedAdvertiseURL())
		}
		if e.CAKeyFile != "" {
			bad("etcd.caKeyFile", "the embedded etcd keeps its own CA in stateDir: leave etcd.caKeyFile out, or give etcd.endpoints of the existing etcd whose CA key it is instead of the embedded etcd")
		}
		c.validateJoinService(bad)
	case len(e.Endpoints) == 0:
		bad("etcd.endpoints", "no etcd endpoints: give --etcd-endpoints (with --etcd-ca, --etcd-cert, --etcd-key), run `meshctl join TOKEN`, or start the first node with --embedded-etcd (meshctl up)")
	default:
		for i, ep := range e.Endpoints {
			if err := checkHTTPSURL(ep); err != nil {
				bad(fmt.Sprintf("etcd.endpoints[%d]", i), "%v", err)
			}
		}
		for field, f := range map[string]string{"etcd.caFile": e.CAFile, "etcd.certFile": e.CertFile, "etcd.keyFile": e.KeyFile} {
			if f == "" {
				bad(field, "missing: etcd is reached over TLS with a client certificate")
			} else if !filepath.IsAbs(f) {
				bad(field, "%q must be an absolute path", f)
			}
		}
		if c.Join.Server != "" {
			if err := checkHostPort(c.Join.Server); err != nil {
				bad("join.server", "%v", err)
			}
		}
		if e.CAKeyFile != "" {
			// A seed on an existing etcd: the same join service as the
			// embedded seed's. Whether the key matches etcd.caFile and the
			// certificate is an admin's is checked when the agent starts
			// (the files are read there).
			if !filepath.IsAbs(e.CAKeyFile) {
				bad("etcd.caKeyFile", "%q must be an absolute path", e.CAKeyFile)
			}
			if c.Kubernetes.Enabled {
				bad("etcd.caKeyFile", "a Kubernetes node's agent is not a seed: run the seed (etcd.caKeyFile, the join service) on a VM or a control-plane machine, outside the DaemonSet")
			}
			c.validateJoinService(bad)
			if h, _, err := net.SplitHostPort(c.JoinAdvertise()); err == nil && isWildcardHost(h) {
				bad("join.advertise", "the join service listens on the wildcard address %q: set join.advertise (--join-advertise) to the host:port joining nodes reach, it goes into every token", c.Join.Listen)
			}
		}
	}
	if e.LeaseTTL.D() < 2*time.Second || e.LeaseTTL.D() > 10*time.Minute {
		bad("etcd.leaseTTL", "%s is out of range: use 2s..10m", e.LeaseTTL.D())
	}

	w := c.WireGuard
	if !ifnameRE.MatchString(w.Interface) {
		bad("wireguard.interface", "%q is not a valid interface name: 1-15 letters, digits, '_', '.', '-'", w.Interface)
	}
	if w.ListenPort < 1 || w.ListenPort > 65535 {
		bad("wireguard.listenPort", "%d is not a UDP port (1..65535)", w.ListenPort)
	}
	switch w.Mode {
	case "auto", "kernel", "userspace":
	default:
		bad("wireguard.mode", "%q: use auto, kernel or userspace", w.Mode)
	}
	if w.PersistentKeepalive.D() < 0 || w.PersistentKeepalive.D() > 65535*time.Second {
		bad("wireguard.persistentKeepalive", "%s is out of range: use 0 (off) up to 65535s", w.PersistentKeepalive.D())
	}
	if r := w.RotateEvery.D(); r != 0 && r < MinRotateEvery {
		bad("wireguard.rotateEvery", "%s is too short: use 0 (off) or at least %s (a rotation waits for every peer)", r, MinRotateEvery)
	}
	if c.Relay.Port < 0 || c.Relay.Port > 65535 {
		bad("relay.port", "%d is outside 1..65535 (0: the default %d)", c.Relay.Port, DefaultRelayPort)
	}
	if c.Relay.Advertise != "" {
		if ap, err := netip.ParseAddrPort(c.Relay.Advertise); err != nil || ap.Port() == 0 || ap.Addr().IsUnspecified() || ap.Addr().IsLoopback() {
			bad("relay.advertise", "%q is not a reachable ip:port (example 198.18.1.10:%d)", c.Relay.Advertise, DefaultRelayPort)
		}
	}
	if c.Relay.RateBytesPerSecond < 0 {
		bad("relay.rateBytesPerSecond", "%d is negative (0: the default %d)", c.Relay.RateBytesPerSecond, DefaultRelayRate)
	}
	for i, ep := range c.Underlay.Endpoints {
		if _, err := netip.ParseAddrPort(ep); err != nil {
			bad(fmt.Sprintf("underlay.endpoints[%d]", i), "%q is not ip:port (example 198.18.1.10:51833)", ep)
		}
	}
	if c.IPAM.MeshPool == "" {
		// The pool is the cluster record's: AllocateNodeCIDR checks the
		// size against it.
		if c.IPAM.NodePrefixLength < 1 || c.IPAM.NodePrefixLength > 128 {
			bad("ipam.nodePrefixLength", "%d is not a prefix length (default %d)", c.IPAM.NodePrefixLength, DefaultNodePrefixLen)
		}
	} else if p, err := netip.ParsePrefix(c.IPAM.MeshPool); err != nil || p != p.Masked() {
		bad("ipam.meshPool", "%q is not a CIDR with its host bits zero (example %s; leave it out to use the cluster's)", c.IPAM.MeshPool, DefaultMeshPool)
	} else {
		if c.IPAM.NodePrefixLength < p.Bits() || c.IPAM.NodePrefixLength > p.Addr().BitLen() {
			bad("ipam.nodePrefixLength", "%d must be between the pool's /%d and /%d", c.IPAM.NodePrefixLength, p.Bits(), p.Addr().BitLen())
		}
	}
	if c.BPF.PinPath == "" || !filepath.IsAbs(c.BPF.PinPath) {
		bad("bpf.pinPath", "%q must be an absolute path (under a bpffs mount, usually /sys/fs/bpf)", c.BPF.PinPath)
	}
	switch c.Log.Format {
	case "text", "json":
	default:
		bad("log.format", "%q: use text or json", c.Log.Format)
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		bad("log.level", "%q: use debug, info, warn or error", c.Log.Level)
	}
	for i, a := range c.Metrics.Allow {
		if p, err := netip.ParsePrefix(a); err != nil || p != p.Masked() {
			bad(fmt.Sprintf("metrics.allow[%d]", i), "%q is not a CIDR with its host bits zero (example 198.18.0.0/15)", a)
		}
	}
	if c.Metrics.Address != "" {
		if err := checkHostPort(c.Metrics.Address); err != nil {
			bad("metrics.address", "%v (empty disables metrics)", err)
		}
	}
	if c.Flows.Buffer < 16 || c.Flows.Buffer > 1<<20 {
		bad("flows.buffer", "%d is out of range: keep 16..1048576 recent flows", c.Flows.Buffer)
	}
	seen := map[string]bool{}
	for i, wl := range c.Workloads {
		field := fmt.Sprintf("workloads[%d]", i)
		if err := ValidateNetnsName(wl.Netns); err != nil {
			bad(field+".netns", "%v", err)
		}
		if seen[wl.Netns] {
			bad(field+".netns", "%q is declared twice", wl.Netns)
		}
		seen[wl.Netns] = true
		if err := ValidateLabels(wl.Labels); err != nil {
			bad(field+".labels", "%v", err)
		}
	}
	if len(errs) == 0 {
		return nil
	}
	sort.Strings(errs)
	return fmt.Errorf("%w:\n  %s", ErrInvalid, strings.Join(errs, "\n  "))
}

func checkHTTPSURL(s string) error {
	u, err := url.Parse(s)
	if err != nil || u.Host == "" {
		return fmt.Errorf("%q is not a URL (example https://198.18.0.1:2379)", s)
	}
	if u.Scheme != "https" {
		return fmt.Errorf("%q must use https: the control plane is always TLS", s)
	}
	if u.Port() == "" {
		return fmt.Errorf("%q has no port", s)
	}
	return nil
}

func checkHostPort(s string) error {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return fmt.Errorf("%q is not host:port", s)
	}
	if host != "" && strings.ContainsAny(host, " /") {
		return fmt.Errorf("%q has an invalid host", s)
	}
	var n int
	if _, err := fmt.Sscanf(port, "%d", &n); err != nil || n < 1 || n > 65535 || fmt.Sprint(n) != port {
		return fmt.Errorf("%q has an invalid port", s)
	}
	return nil
}

func isWildcardHost(h string) bool {
	if h == "" {
		return true
	}
	a, err := netip.ParseAddr(h)
	return err == nil && a.IsUnspecified()
}

// ValidateNetnsName checks a network namespace name as `ip netns` accepts
// it (a file name under /var/run/netns).
func ValidateNetnsName(s string) error {
	if s == "" || len(s) > 64 || s == "." || s == ".." || strings.ContainsAny(s, "/\x00 ") {
		return fmt.Errorf("%q is not a network namespace name (1-64 characters, no '/' or spaces)", s)
	}
	return nil
}

// NewLogger builds the agent's logger from Log (format and level), writing
// to w. The agent injects it everywhere; nothing logs globally.
func (c *Config) NewLogger(w io.Writer) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(c.Log.Level)) // validated: debug|info|warn|error
	opts := &slog.HandlerOptions{Level: level}
	if c.Log.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}
