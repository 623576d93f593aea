package bpf

import (
	"fmt"
	"log/slog"
	"regexp"
	"time"
)

// DefaultPinRoot is where pins live unless Config.PinRoot says otherwise.
const DefaultPinRoot = "/sys/fs/bpf/weft"

// AttachMode chooses how programs are attached to interfaces.
type AttachMode int

const (
	// AttachAuto uses TCX and falls back to tc clsact where the kernel has
	// no TCX (before Linux 6.6).
	AttachAuto AttachMode = iota
	AttachTCX
	AttachTC
)

// Config sizes and places a datapath. The zero value of every field means
// its documented default (docs/datapath.md).
type Config struct {
	// Scope names this datapath's pins: /sys/fs/bpf/weft/<scope>. One per
	// agent, so several lab nodes on one kernel do not collide. Required;
	// letters, digits, '-', '_' and '.', at most 64.
	Scope string
	// PinRoot overrides DefaultPinRoot; it must be on a bpf filesystem.
	PinRoot string
	// Ephemeral loads without pinning anything: the maps and programs go
	// away with the Datapath (tests, benchmarks).
	Ephemeral bool
	// LazyWorkloadPrograms lets Open return once the host-device programs
	// are loaded; the workload programs load in the background and
	// AttachWorkload waits for them. The agent sets it: a node's start-up
	// then waits for half the verifier's work.
	LazyWorkloadPrograms bool

	IPCacheEntries   uint32 // default 524288
	EndpointEntries  uint32 // default 4096
	PolicyEntries    uint32 // default 65536
	ConntrackEntries uint32 // default 131072
	EventsBytes      uint32 // ring buffer size, a power of two >= 4096; default 1 MiB

	// DropEventsPerSecond and DropEventsBurst rate-limit drop events per
	// CPU (defaults 100 and 200). New-connection events are not limited.
	DropEventsPerSecond uint32
	DropEventsBurst     uint32

	Timeouts Timeouts

	// ControlPorts are the agents' ports on their mesh addresses: control
	// traffic between two nodes' own mesh addresses on them passes the
	// host endpoint whatever the policy (docs/datapath.md, "Control traffic
	// between nodes").
	ControlPorts ControlPorts

	Attach AttachMode
	Logger *slog.Logger
}

// Timeouts are how long idle connections stay tracked.
type Timeouts struct {
	TCPSyn         time.Duration // default 60s: SYN sent, no reply yet
	TCPEstablished time.Duration // default 6h
	TCPClosing     time.Duration // default 10s: after FIN both ways or RST
	UDP            time.Duration // default 60s
	ICMP           time.Duration // default 30s: echo
	Other          time.Duration // default 60s
}

// ControlPorts are the agent-to-agent ports the datapath lets through
// between nodes' own mesh addresses. The zero value of a field means the
// agent's default (agent/meshtls, agent/health).
type ControlPorts struct {
	API    uint16 // TCP: the agent-to-agent API; default 51835
	Gossip uint16 // TCP and UDP: memberlist gossip; default 51836
	Probe  uint16 // UDP: health probes; default 51837
}

// Default control ports, the agent's own (a test in agent/ keeps them in
// step).
const (
	DefaultControlPortAPI    uint16 = 51835
	DefaultControlPortGossip uint16 = 51836
	DefaultControlPortProbe  uint16 = 51837
)

var scopeRE = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,64}$`)

func (c Config) withDefaults() Config {
	def := func(v *uint32, d uint32) {
		if *v == 0 {
			*v = d
		}
	}
	def(&c.IPCacheEntries, 524288)
	def(&c.EndpointEntries, 4096)
	def(&c.PolicyEntries, 65536)
	def(&c.ConntrackEntries, 131072)
	def(&c.EventsBytes, 1<<20)
	def(&c.DropEventsPerSecond, 100)
	def(&c.DropEventsBurst, 200)
	def16 := func(v *uint16, d uint16) {
		if *v == 0 {
			*v = d
		}
	}
	def16(&c.ControlPorts.API, DefaultControlPortAPI)
	def16(&c.ControlPorts.Gossip, DefaultControlPortGossip)
	def16(&c.ControlPorts.Probe, DefaultControlPortProbe)
	dur := func(v *time.Duration, d time.Duration) {
		if *v == 0 {
			*v = d
		}
	}
	dur(&c.Timeouts.TCPSyn, 60*time.Second)
	dur(&c.Timeouts.TCPEstablished, 6*time.Hour)
	dur(&c.Timeouts.TCPClosing, 10*time.Second)
	dur(&c.Timeouts.UDP, 60*time.Second)
	dur(&c.Timeouts.ICMP, 30*time.Second)
	dur(&c.Timeouts.Other, 60*time.Second)
	if c.PinRoot == "" {
		c.PinRoot = DefaultPinRoot
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

func (c Config) validate() error {
	if !c.Ephemeral && !scopeRE.MatchString(c.Scope) {
		return fmt.Errorf("bpf config: scope %q must be 1-64 letters, digits, '-', '_' or '.' (it names the pin directory)", c.Scope)
	}
	if c.Scope == "." || c.Scope == ".." {
		return fmt.Errorf("bpf config: scope %q is not a directory name", c.Scope)
	}
	if c.EventsBytes < 4096 || c.EventsBytes&(c.EventsBytes-1) != 0 {
		return fmt.Errorf("bpf config: events buffer size %d must be a power of two of at least 4096 bytes", c.EventsBytes)
	}
	for name, d := range map[string]time.Duration{
		"tcp-syn": c.Timeouts.TCPSyn, "tcp-established": c.Timeouts.TCPEstablished,
		"tcp-closing": c.Timeouts.TCPClosing, "udp": c.Timeouts.UDP, "icmp": c.Timeouts.ICMP, "other": c.Timeouts.Other,
	} {
		if d < time.Second || d > 1<<32*time.Second-1 {
			return fmt.Errorf("bpf config: %s timeout %v must be between 1s and %v", name, d, time.Duration(1<<32-1)*time.Second)
		}
	}
	switch c.Attach {
	case AttachAuto, AttachTCX, AttachTC:
	default:
		return fmt.Errorf("bpf config: unknown attach mode %d", c.Attach)
	}
	return nil
}
