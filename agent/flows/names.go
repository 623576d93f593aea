package flows

import (
	"strconv"
	"strings"
)

// Verdicts of a flow record.
const (
	Forwarded = "forwarded"
	Dropped   = "dropped"
)

// ProtocolName names an IP protocol number.
func ProtocolName(p uint8) string {
	switch p {
	case 1:
		return "icmp"
	case 6:
		return "tcp"
	case 17:
		return "udp"
	case 58:
		return "icmpv6"
	case 132:
		return "sctp"
	}
	return strconv.Itoa(int(p))
}

// TCPFlags renders TCP flags as SYN,ACK.
func TCPFlags(fl uint8) string {
	names := []struct {
		bit  uint8
		name string
	}{{0x02, "SYN"}, {0x10, "ACK"}, {0x01, "FIN"}, {0x04, "RST"}, {0x08, "PSH"}, {0x20, "URG"}}
	var out []string
	for _, n := range names {
		if fl&n.bit != 0 {
			out = append(out, n.name)
		}
	}
	return strings.Join(out, ",")
}
