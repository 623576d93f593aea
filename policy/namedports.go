package policy

import (
	"errors"
	"fmt"
	"slices"
	"strings"
)

// NamedPort is one named port of an endpoint: a Kubernetes container port
// with a name (spec.containers[].ports[].name), or the same declared for
// any other workload. A policy port entry that names it (`port: http`)
// stands for Port on Protocol.
type NamedPort struct {
	Name     string   `json:"name"`
	Protocol Protocol `json:"protocol"` // TCP, UDP or SCTP
	Port     uint16   `json:"port"`
}

func (np NamedPort) String() string { return fmt.Sprintf("%s=%d/%s", np.Name, np.Port, np.Protocol) }

// Validate checks a named port as Kubernetes checks a container port: a
// valid port name, a protocol of TCP, UDP or SCTP, a port of 1-65535.
func (np NamedPort) Validate() error {
	if err := ValidatePortName(np.Name); err != nil {
		return err
	}
	switch np.Protocol {
	case ProtoTCP, ProtoUDP, ProtoSCTP:
	default:
		return fmt.Errorf("named port %q: protocol %q is not one a port can have (use TCP, UDP or SCTP)", np.Name, np.Protocol)
	}
	if np.Port == 0 {
		return fmt.Errorf("named port %q: port 0 is not a port (use 1-65535)", np.Name)
	}
	return nil
}

// portNameRule says what a port name is, for messages.
const portNameRule = "1-15 lower-case letters, digits and '-', with at least one letter, no '-' at either end and no \"--\""

// ValidatePortName checks a port name with the Kubernetes rule (an
// IANA service name, RFC 6335): 1-15 characters of [a-z0-9-], at least
// one letter, no '-' at either end, no two '-' in a row.
func ValidatePortName(name string) error {
	why := ""
	switch {
	case name == "":
		why = "it is empty"
	case len(name) > 15:
		why = fmt.Sprintf("it is %d characters long", len(name))
	case name[0] == '-' || name[len(name)-1] == '-':
		why = "it starts or ends with '-'"
	case strings.Contains(name, "--"):
		why = "it contains \"--\""
	default:
		letter := false
		for i := 0; i < len(name); i++ {
			c := name[i]
			switch {
			case c >= 'a' && c <= 'z':
				letter = true
			case c >= '0' && c <= '9', c == '-':
			default:
				why = fmt.Sprintf("character %q is not allowed", c)
			}
			if why != "" {
				break
			}
		}
		if why == "" && !letter {
			why = "it has no letter"
		}
	}
	if why == "" {
		return nil
	}
	return fmt.Errorf("%q is not a port name: %s (a port name is %s)", name, why, portNameRule)
}

// normalizeNamedPorts validates ports and returns them sorted, without
// duplicates; nil for none. One name may stand for several ports (the
// union of several endpoints' ports).
func normalizeNamedPorts(ports []NamedPort) ([]NamedPort, error) {
	var errs []error
	for i, np := range ports {
		if err := np.Validate(); err != nil {
			errs = append(errs, fmt.Errorf("named port %d: %w", i, err))
		}
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, errors.Join(errs...))
	}
	if len(ports) == 0 {
		return nil, nil
	}
	out := slices.Clone(ports)
	slices.SortFunc(out, compareNamedPort)
	return slices.Compact(out), nil
}

func compareNamedPort(a, b NamedPort) int {
	if c := strings.Compare(a.Name, b.Name); c != 0 {
		return c
	}
	if c := strings.Compare(string(a.Protocol), string(b.Protocol)); c != 0 {
		return c
	}
	return int(a.Port) - int(b.Port)
}

// resolveNamed returns what a named entry stands for among ports: every
// port with its name and (unless the entry is ANY) its protocol.
func (pr PortRule) resolveNamed(ports []NamedPort) []NamedPort {
	var out []NamedPort
	for _, np := range ports {
		if np.Name == pr.Name && (pr.Protocol == ProtoANY || pr.Protocol == np.Protocol) {
			out = append(out, np)
		}
	}
	return out
}

// namedKeys returns the port keys the named entries resolve to among
// ports (nil when none resolves).
func namedKeys(named []PortRule, ports []NamedPort) []portKey {
	if len(ports) == 0 {
		return nil
	}
	var out []portKey
	for _, pr := range named {
		for _, np := range pr.resolveNamed(ports) {
			for _, proto := range np.Protocol.numbers() {
				out = append(out, portKey{proto: proto, port: np.Port, plen: 16})
			}
		}
	}
	return out
}
