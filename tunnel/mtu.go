package tunnel

import (
	"errors"
	"fmt"
)

// WireGuard overhead per packet: outer IP header, UDP header (8) and the
// WireGuard data header (type, receiver index, counter: 16) plus the
// Poly1305 tag (16).
const (
	OverheadIPv4 = 20 + 8 + 16 + 16 // 60
	OverheadIPv6 = 40 + 8 + 16 + 16 // 80

	// minMTU is the smallest tunnel MTU accepted: IPv6 inside the tunnel
	// needs 1280.
	minMTU = 1280
	maxMTU = 65535 - OverheadIPv4
)

// ErrBadMTU is wrapped by errors about an MTU that cannot work.
var ErrBadMTU = errors.New("tunnel: unusable MTU")

// MTUFor returns the tunnel MTU for an underlay MTU. Use the IPv6 overhead
// whenever any peer may be reached over IPv6 (ipv6Underlay): the device has
// one MTU for all peers.
//
// Padding: WireGuard pads the plaintext to a multiple of 16 bytes, but never
// beyond the device MTU, so a full-sized packet carries no padding and the
// overhead above is exact; no rounding down is needed.
func MTUFor(underlayMTU int, ipv6Underlay bool) (int, error) {
	overhead := OverheadIPv4
	if ipv6Underlay {
		overhead = OverheadIPv6
	}
	mtu := underlayMTU - overhead
	if mtu < minMTU {
		return 0, fmt.Errorf("%w: underlay MTU %d leaves %d for the tunnel after %d bytes of WireGuard overhead; at least %d is needed (raise the underlay MTU or set the tunnel MTU explicitly)", ErrBadMTU, underlayMTU, mtu, overhead, minMTU)
	}
	return mtu, nil
}

func checkMTU(mtu int) error {
	if mtu < minMTU || mtu > maxMTU {
		return fmt.Errorf("%w: %d is outside %d..%d", ErrBadMTU, mtu, minMTU, maxMTU)
	}
	return nil
}
