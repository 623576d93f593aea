package tunnel

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"

	"github.com/tailscale/wireguard-go/device"
	"github.com/tailscale/wireguard-go/ipc"
)

// maxUAPISet bounds one "set" operation read from the UAPI socket. A peer
// takes about 300 bytes; this allows well over 100,000 of them.
const maxUAPISet = 64 << 20

// serveUAPI answers one UAPI connection, like device.IpcHandle, with two
// additions the roaming bind needs to stay true to the device:
//
//   - A configured endpoint or a removed peer makes the bind forget what it
//     learned about that key: the agent's configuration replaced the
//     endpoint the bind believes in, so the next initiation or authenticated
//     packet must be applied again. Without it a peer removed and added back
//     (a node that left and joined again) kept a stale "already there"
//     state, and its initiations were answered at the configured address,
//     unreachable behind NAT, for a whole trust window.
//   - A peer created by this operation whose initiation arrived before it
//     existed (the new node raced its record to us) is configured with that
//     initiation's source instead of the configured endpoint, so the
//     handshake the device sends when the peer comes up reaches the node at
//     once, NAT or not, rather than after WireGuard's 5 s retry.
func serveUAPI(c net.Conn, dev *device.Device, bind *roamingBind) {
	defer c.Close()
	rw := bufio.NewReadWriter(bufio.NewReader(c), bufio.NewWriter(c))
	for {
		op, err := rw.ReadString('\n')
		if err != nil {
			return
		}
		switch op {
		case "set=1\n":
			err = uapiSet(rw.Reader, dev, bind)
		case "get=1\n":
			var next byte
			if next, err = rw.ReadByte(); err != nil {
				return
			}
			if next != '\n' {
				return
			}
			err = dev.IpcGetOperation(rw.Writer)
		default:
			return
		}
		code := int64(0)
		if err != nil {
			var status *device.IPCError
			if errors.As(err, &status) {
				code = status.ErrorCode()
			} else {
				code = ipc.IpcErrorInvalid
			}
			bind.log.Warn("UAPI operation failed", "err", err)
		}
		fmt.Fprintf(rw, "errno=%d\n\n", code)
		if rw.Flush() != nil {
			return
		}
	}
}

// uapiSet reads one set operation (up to its blank line), rewrites it as
// serveUAPI says, applies it, and then updates the bind.
func uapiSet(r *bufio.Reader, dev *device.Device, bind *roamingBind) error {
	var out bytes.Buffer
	var (
		forget    [][32]byte
		all       bool
		cur       [32]byte
		inPeer    bool
		created   bool
		endpoint  bool // the current peer's block set an endpoint
		learned   map[[32]byte]netip.AddrPort
		read      int
		finishing = func() {
			if !inPeer || !created {
				return
			}
			if src, ok := bind.takeEarly(cur); ok {
				if !endpoint {
					fmt.Fprintf(&out, "endpoint=%s\n", src)
				}
				if learned == nil {
					learned = map[[32]byte]netip.AddrPort{}
				}
				learned[cur] = src
			}
		}
	)
	for {
		line, err := r.ReadString('\n')
		read += len(line)
		if read > maxUAPISet {
			return fmt.Errorf("UAPI set operation larger than %d bytes", maxUAPISet)
		}
		if err != nil && !(errors.Is(err, io.EOF) && line != "") {
			return fmt.Errorf("reading UAPI set operation: %w", err)
		}
		trimmed := strings.TrimSuffix(line, "\n")
		if trimmed == "" {
			break
		}
		key, value, _ := strings.Cut(trimmed, "=")
		switch {
		case key == "public_key":
			finishing()
			inPeer, created, endpoint = false, false, false
			b, herr := hex.DecodeString(value)
			if herr == nil && len(b) == 32 {
				copy(cur[:], b)
				inPeer = true
				_, exists := dev.LookupActivePeer(device.NoisePublicKey(cur))
				created = !exists
			}
		case key == "replace_peers" && !inPeer:
			all = true
		case inPeer && key == "update_only" && value == "true":
			created = false // the device does not create it either
		case inPeer && key == "remove" && value == "true":
			forget = append(forget, cur)
			created = false
		case inPeer && key == "endpoint":
			forget = append(forget, cur)
			endpoint = true
			if created {
				if src, ok := bind.peekEarly(cur); ok {
					trimmed = "endpoint=" + src.String()
				}
			}
		}
		out.WriteString(trimmed)
		out.WriteByte('\n')
		if err != nil {
			break
		}
	}
	finishing()
	out.WriteByte('\n')
	if err := dev.IpcSetOperation(&out); err != nil {
		return err
	}
	if all {
		bind.forgetAll()
	}
	bind.forget(forget...)
	for pk, src := range learned {
		bind.log.Info("new peer reached at the address its early initiation came from", "endpoint", src.String())
		bind.adopt(pk, src)
	}
	return nil
}
