package plugin

import (
	"bytes"
	"encoding/json"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/utils"
	"github.com/containernetworking/cni/pkg/version"
)

// Type is the plugin's name in a network configuration ("type": "weft-cni")
// and the file name of its binary in the runtime's CNI bin dir.
const Type = "weft-cni"

// SupportedVersions are the CNI spec versions the plugin speaks: CHECK
// needs 0.4.0; STATUS and GC are 1.1.0.
var SupportedVersions = []string{"0.4.0", "1.0.0", "1.1.0"}

// The defaults of the network configuration's keys.
const (
	DefaultAgentSocket = "/run/weft/agent.sock"
	DefaultTimeout     = 60 * time.Second
)

// MaxTimeout bounds "timeout": the kubelet gives up on a sandbox after its
// runtime-request-timeout (2m by default) and retries; waiting longer than
// that only leaves a plugin running for a sandbox nobody waits for.
const MaxTimeout = 5 * time.Minute

// maxSocketPath is what fits in a unix socket address (sun_path, with its
// terminating NUL).
const maxSocketPath = 107

// maxConfig bounds the network configuration read from stdin; a
// prevResult of a pod with many interfaces is still a few KiB.
const maxConfig = 1 << 20

// Config is the plugin's network configuration as the runtime passed it on
// stdin: the CNI keys (cniVersion, name, type, prevResult) and weft-cni's.
type Config struct {
	types.PluginConf

	// AgentSocket is the local agent's API socket ("agentSocket").
	AgentSocket string
	// Timeout is how long ADD waits for the agent ("timeout": "60s", or
	// a number of seconds): an agent that is starting, or restarting
	// with its DaemonSet pod, is retried until then.
	Timeout time.Duration
	// LogFile is where the plugin logs ("logFile"); empty: warnings and
	// errors only, on stderr, which the runtime logs.
	LogFile string
	// ChainedAfter names the plugins before weft-cni in its conflist
	// ("chainedAfter", written by `weft-cni install --mode chained`), so
	// an error can name them; only informative.
	ChainedAfter string
}

// Chained reports whether the plugin runs after another that made the
// pod's interface: the runtime passes that plugin's result as prevResult.
// It is the mode of an ADD; CHECK and DEL always carry a prevResult (the
// result of the whole ADD, weft-cni's own in primary mode).
func (c *Config) Chained() bool { return c.PrevResult != nil }

// rawConfig is the JSON of weft-cni's own keys.
type rawConfig struct {
	AgentSocket  *string         `json:"agentSocket"`
	Timeout      json.RawMessage `json:"timeout"`
	LogFile      string          `json:"logFile"`
	ChainedAfter string          `json:"chainedAfter"`
}

// ParseConfig decodes and validates the network configuration the runtime
// passed on stdin. Keys it does not know (runtimeConfig, capabilities,
// args) are the runtime's and are ignored. Its errors say which key is
// wrong and what a valid value is.
func ParseConfig(data []byte) (*Config, error) {
	if len(data) > maxConfig {
		return nil, fmt.Errorf("the network configuration is %d bytes, more than the %d a weft-cni configuration can be", len(data), maxConfig)
	}
	var conf Config
	if err := json.Unmarshal(data, &conf.PluginConf); err != nil {
		return nil, fmt.Errorf("decoding the network configuration: %w", err)
	}
	var raw rawConfig
	if err := json.Unmarshal(data, &raw); err != nil {
		return nil, fmt.Errorf("decoding the network configuration: %w", err)
	}
	if conf.Type != "" && conf.Type != Type {
		return nil, fmt.Errorf("the network configuration's type is %q: this plugin is %q", conf.Type, Type)
	}
	if e := utils.ValidateNetworkName(conf.Name); e != nil {
		return nil, fmt.Errorf("the network configuration's name %q: %s (letters, digits, '_', '.', '-', starting with a letter or digit)", conf.Name, e.Msg)
	}
	if !slices.Contains(SupportedVersions, conf.CNIVersion) {
		return nil, fmt.Errorf("the network configuration's cniVersion %q is not one weft-cni supports (%s): set the conflist's cniVersion to one of them", conf.CNIVersion, strings.Join(SupportedVersions, ", "))
	}

	conf.AgentSocket = DefaultAgentSocket
	if raw.AgentSocket != nil {
		conf.AgentSocket = *raw.AgentSocket
	}
	if err := checkAbsPath("agentSocket", conf.AgentSocket, maxSocketPath); err != nil {
		return nil, err
	}
	t, err := parseTimeout(raw.Timeout)
	if err != nil {
		return nil, err
	}
	conf.Timeout = t
	if raw.LogFile != "" {
		if err := checkAbsPath("logFile", raw.LogFile, 4095); err != nil {
			return nil, err
		}
	}
	conf.LogFile = raw.LogFile
	if len(raw.ChainedAfter) > 256 || strings.ContainsFunc(raw.ChainedAfter, isControl) {
		return nil, fmt.Errorf("the network configuration's chainedAfter is not a list of plugin types (at most 256 printable characters)")
	}
	conf.ChainedAfter = raw.ChainedAfter

	if conf.RawPrevResult != nil {
		if err := version.ParsePrevResult(&conf.PluginConf); err != nil {
			return nil, fmt.Errorf("the network configuration's prevResult (the result of the plugin before weft-cni): %w", err)
		}
	}
	return &conf, nil
}

// parseTimeout reads "timeout": a Go duration ("60s", "2m") or a number of
// seconds; absent is DefaultTimeout.
func parseTimeout(raw json.RawMessage) (time.Duration, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return DefaultTimeout, nil
	}
	var d time.Duration
	var s string
	var secs float64
	switch {
	case json.Unmarshal(raw, &s) == nil:
		var err error
		if d, err = time.ParseDuration(s); err != nil {
			return 0, fmt.Errorf("the network configuration's timeout %q is not a duration: write it like \"60s\" or \"2m\"", s)
		}
	case json.Unmarshal(raw, &secs) == nil:
		if secs < 0 || secs > MaxTimeout.Seconds() {
			return 0, fmt.Errorf("the network configuration's timeout %v (seconds) is not between 1s and %v", secs, MaxTimeout)
		}
		d = time.Duration(secs * float64(time.Second))
	default:
		return 0, fmt.Errorf("the network configuration's timeout is %s: write a duration like \"60s\" or a number of seconds", raw)
	}
	if d < time.Second || d > MaxTimeout {
		return 0, fmt.Errorf("the network configuration's timeout %v is not between 1s and %v", d, MaxTimeout)
	}
	return d, nil
}

// checkAbsPath refuses a path that is not absolute and clean, holds a
// control character, or is longer than max bytes.
func checkAbsPath(key, p string, max int) error {
	switch {
	case p == "":
		return fmt.Errorf("the network configuration's %s is empty: give an absolute path or leave the key out", key)
	case len(p) > max:
		return fmt.Errorf("the network configuration's %s is %d bytes long, more than %d", key, len(p), max)
	case strings.ContainsFunc(p, isControl):
		return fmt.Errorf("the network configuration's %s %q holds a control character", key, p)
	case !filepath.IsAbs(p) || filepath.Clean(p) != p:
		return fmt.Errorf("the network configuration's %s %q is not an absolute, clean path (no relative part, no trailing /)", key, p)
	}
	return nil
}

func isControl(r rune) bool { return r < 0x20 || r == 0x7f }
