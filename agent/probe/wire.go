package probe

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"time"

	"golang.org/x/sys/unix"

	"github.com/weftmesh/weft/agent/api"
)

// WireWatch counts what crosses the node's underlay interfaces.
type WireWatch struct {
	// Ifaces returns the indexes of the underlay interfaces (in the
	// agent's namespace).
	Ifaces func() ([]int, error)
	// TunnelPort is the WireGuard UDP port.
	TunnelPort int
}

// maxWatch bounds one wire check.
const maxWatch = 10 * time.Second

// Check captures on the underlay for req.Duration and counts packets,
// WireGuard packets and packets carrying req.Marker in the clear.
func (w *WireWatch) Check(ctx context.Context, req api.WireCheckRequest) (api.WireCheckResult, error) {
	d := time.Duration(req.Duration)
	if d <= 0 || d > maxWatch {
		return api.WireCheckResult{}, api.Errorf(api.CodeInvalid, "duration %s: use 1ms..%s", d, maxWatch)
	}
	if len(req.Marker) < 8 || len(req.Marker) > 64 {
		return api.WireCheckResult{}, api.Errorf(api.CodeInvalid, "the marker needs 8 to 64 bytes")
	}
	ifaces, err := w.Ifaces()
	if err != nil {
		return api.WireCheckResult{}, fmt.Errorf("finding the underlay interfaces: %w", err)
	}
	want := map[int]bool{}
	for _, i := range ifaces {
		want[i] = true
	}
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
	if err != nil {
		return api.WireCheckResult{}, fmt.Errorf("opening a packet socket: %w", err)
	}
	defer unix.Close(fd)
	tv := unix.NsecToTimeval((100 * time.Millisecond).Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return api.WireCheckResult{}, err
	}
	var res api.WireCheckResult
	marker := []byte(req.Marker)
	buf := make([]byte, 65536)
	end := time.Now().Add(d)
	for time.Now().Before(end) && ctx.Err() == nil {
		n, from, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			continue // timeout or interrupted: check the clock
		}
		ll, ok := from.(*unix.SockaddrLinklayer)
		if !ok || !want[ll.Ifindex] {
			continue
		}
		pkt := buf[:n]
		res.Packets++
		if w.isTunnel(pkt) {
			res.Tunnel++
		}
		if bytes.Contains(pkt, marker) {
			res.Cleartext++
		}
	}
	return res, ctx.Err()
}

// isTunnel reports a UDP packet to or from the WireGuard port, behind an
// Ethernet header or not.
func (w *WireWatch) isTunnel(pkt []byte) bool {
	for _, off := range []int{14, 0} {
		if len(pkt) < off+28 {
			continue
		}
		ip := pkt[off:]
		if ip[0]>>4 != 4 || ip[9] != unix.IPPROTO_UDP {
			continue
		}
		ihl := int(ip[0]&0x0f) * 4
		if len(ip) < ihl+4 {
			continue
		}
		sp, dp := binary.BigEndian.Uint16(ip[ihl:]), binary.BigEndian.Uint16(ip[ihl+2:])
		if int(sp) == w.TunnelPort || int(dp) == w.TunnelPort {
			return true
		}
	}
	return false
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }
