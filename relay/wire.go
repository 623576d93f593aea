package relay

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
)

// Message types.
const (
	TypeRegister   = 0xF1
	TypeRegistered = 0xF2
	TypeKeepalive  = 0xF3
	TypeData       = 0xF4
	TypeUnknown    = 0xF5
	version        = 1
)

// HeaderLen is the DATA header: 4 bytes of type and version, 8 of ID.
const HeaderLen = 12

// ID names a mesh node to relays.
type ID [8]byte

// NodeID is a node's ID: the first 8 bytes of SHA-256 over "cluster/node".
func NodeID(cluster, node string) ID {
	h := sha256.Sum256([]byte(cluster + "/" + node))
	return ID(h[:8])
}

func (id ID) String() string { return hex.EncodeToString(id[:]) }

// Ticket is a one-use registration secret.
type Ticket [16]byte

// WireGuard message sizes (the protocol's fixed sizes; a transport message
// has a 16-byte header and at least a 16-byte tag).
const (
	wgInitiation   = 148
	wgResponse     = 92
	wgCookieReply  = 64
	wgTransportMin = 32
)

// ErrMalformed is wrapped by every parse error.
var ErrMalformed = errors.New("relay: malformed message")

// Message is a parsed datagram; Payload aliases the input.
type Message struct {
	Type    byte
	ID      ID     // REGISTERED, KEEPALIVE, DATA
	Ticket  Ticket // REGISTER
	Payload []byte // DATA: the WireGuard message
}

// Parse decodes a datagram and checks its shape: a DATA payload must be a
// WireGuard message.
func Parse(b []byte) (Message, error) {
	if len(b) < 4 {
		return Message{}, fmt.Errorf("%w: %d bytes, a message has at least 4", ErrMalformed, len(b))
	}
	if b[1] != version || b[2] != 0 || b[3] != 0 {
		return Message{}, fmt.Errorf("%w: version %d (want %d) or non-zero reserved bytes", ErrMalformed, b[1], version)
	}
	m := Message{Type: b[0]}
	switch b[0] {
	case TypeRegister:
		if len(b) != 4+16 {
			return Message{}, fmt.Errorf("%w: REGISTER is 20 bytes, got %d", ErrMalformed, len(b))
		}
		copy(m.Ticket[:], b[4:])
	case TypeRegistered, TypeKeepalive:
		if len(b) != 4+8 {
			return Message{}, fmt.Errorf("%w: message 0x%x is 12 bytes, got %d", ErrMalformed, b[0], len(b))
		}
		copy(m.ID[:], b[4:])
	case TypeUnknown:
		if len(b) != 4 {
			return Message{}, fmt.Errorf("%w: UNKNOWN is 4 bytes, got %d", ErrMalformed, len(b))
		}
	case TypeData:
		if len(b) < HeaderLen {
			return Message{}, fmt.Errorf("%w: DATA shorter than its header", ErrMalformed)
		}
		copy(m.ID[:], b[4:12])
		m.Payload = b[HeaderLen:]
		if err := checkWireGuard(m.Payload); err != nil {
			return Message{}, err
		}
	default:
		return Message{}, fmt.Errorf("%w: unknown type 0x%x", ErrMalformed, b[0])
	}
	return m, nil
}

// checkWireGuard says whether p has a WireGuard message's type and size:
// the relay forwards nothing else.
func checkWireGuard(p []byte) error {
	if len(p) < 4 || p[1] != 0 || p[2] != 0 || p[3] != 0 {
		return fmt.Errorf("%w: the payload is not a WireGuard message", ErrMalformed)
	}
	n := len(p)
	ok := false
	switch binary.LittleEndian.Uint32(p[:4]) {
	case 1:
		ok = n == wgInitiation
	case 2:
		ok = n == wgResponse
	case 3:
		ok = n == wgCookieReply
	case 4:
		ok = n >= wgTransportMin && n%16 == 0
	}
	if !ok {
		return fmt.Errorf("%w: the payload is not a WireGuard message (type %d, %d bytes)", ErrMalformed, p[0], n)
	}
	return nil
}

func putHeader(b []byte, typ byte) {
	b[0], b[1], b[2], b[3] = typ, version, 0, 0
}
