package relay

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
)

// Message types: the first byte of every relay message. WireGuard's own
// message types are 1..4, so a relay message is never mistaken for one.
const (
	TypeRegister   = 0xF1 // client → relay: a ticket
	TypeRegistered = 0xF2 // relay → client: the client's ID
	TypeKeepalive  = 0xF3 // client → relay and back (the ack): the client's ID
	TypeData       = 0xF4 // both ways: an ID and a WireGuard message
	TypeUnknown    = 0xF5 // relay → client: register again
)

// Version is the protocol version, the second byte of every message.
const Version = 1

// Message lengths.
const (
	// MsgHeaderLen is the header every message starts with: type,
	// version and two zero bytes.
	MsgHeaderLen = 4
	// HeaderLen is the DATA header: the message header and an ID.
	HeaderLen     = MsgHeaderLen + 8
	RegisterLen   = MsgHeaderLen + 16
	RegisteredLen = MsgHeaderLen + 8
	KeepaliveLen  = MsgHeaderLen + 8
	UnknownLen    = MsgHeaderLen
)

// WireGuard message sizes (the protocol's: a handshake initiation is 148
// bytes, a response 92, a cookie reply 64; a transport message has a
// 16-byte header and a 16-byte tag around its padded plaintext, at most a
// 64 KiB segment).
const (
	wgInitiationLen = 148
	wgResponseLen   = 92
	wgCookieLen     = 64
	wgTransportMin  = 32
	wgTransportMax  = 65535
)

// MaxDatagram is the largest datagram the relay and its clients read: a
// UDP payload never exceeds it.
const MaxDatagram = 65535

// ID names a mesh node to relays.
type ID [8]byte

// NodeID is a node's ID: the first 8 bytes of SHA-256 over "cluster/node".
func NodeID(cluster, node string) ID {
	h := sha256.Sum256([]byte(cluster + "/" + node))
	return ID(h[:8])
}

func (id ID) String() string { return hex.EncodeToString(id[:]) }

// Ticket is a one-use registration secret, issued by Server.Ticket.
type Ticket [16]byte

// ErrMalformed is wrapped by every error of Parse and CheckWireGuard.
var ErrMalformed = errors.New("relay: malformed message")

// Message is a parsed datagram; Payload aliases the input.
type Message struct {
	Type    byte
	ID      ID     // REGISTERED, KEEPALIVE, DATA
	Ticket  Ticket // REGISTER
	Payload []byte // DATA: the WireGuard message
}

// problem is why a datagram does not parse. The hot paths use it instead
// of an error value: it costs no allocation per dropped datagram, and Parse
// turns it into an error with the datagram's details.
type problem uint8

const (
	wellFormed problem = iota
	tooShort
	badVersion
	badReserved
	badType
	badLength
	notWireGuard
)

// parse checks a datagram's framing and, for DATA, that the payload is a
// WireGuard message. It allocates nothing.
func parse(b []byte) (byte, problem) {
	if len(b) < MsgHeaderLen {
		return 0, tooShort
	}
	if b[1] != Version {
		return b[0], badVersion
	}
	if b[2] != 0 || b[3] != 0 {
		return b[0], badReserved
	}
	typ := b[0]
	want := 0
	switch typ {
	case TypeRegister:
		want = RegisterLen
	case TypeRegistered:
		want = RegisteredLen
	case TypeKeepalive:
		want = KeepaliveLen
	case TypeUnknown:
		want = UnknownLen
	case TypeData:
		if len(b) < HeaderLen {
			return typ, badLength
		}
		return typ, wireGuardShape(b[HeaderLen:])
	default:
		return typ, badType
	}
	if len(b) != want {
		return typ, badLength
	}
	return typ, wellFormed
}

// wireGuardShape says whether p has a WireGuard message's type and size:
// the relay forwards nothing else. A transport message's length is not
// checked against a multiple of 16: WireGuard pads only up to the device
// MTU, so a full-sized packet of a device whose MTU is no multiple of 16
// (1420, the usual one) carries no padding.
func wireGuardShape(p []byte) problem {
	if len(p) < 4 || p[1] != 0 || p[2] != 0 || p[3] != 0 {
		return notWireGuard
	}
	n := len(p)
	good := false
	switch p[0] {
	case 1:
		good = n == wgInitiationLen
	case 2:
		good = n == wgResponseLen
	case 3:
		good = n == wgCookieLen
	case 4:
		good = n >= wgTransportMin && n <= wgTransportMax
	}
	if !good {
		return notWireGuard
	}
	return wellFormed
}

func typeName(t byte) string {
	switch t {
	case TypeRegister:
		return "REGISTER"
	case TypeRegistered:
		return "REGISTERED"
	case TypeKeepalive:
		return "KEEPALIVE"
	case TypeData:
		return "DATA"
	case TypeUnknown:
		return "UNKNOWN"
	}
	return fmt.Sprintf("type 0x%02x", t)
}

func (p problem) err(typ byte, b []byte) error {
	switch p {
	case wellFormed:
		return nil
	case tooShort:
		return fmt.Errorf("%w: %d bytes; every message has a %d-byte header", ErrMalformed, len(b), MsgHeaderLen)
	case badVersion:
		return fmt.Errorf("%w: version %d, this relay speaks version %d", ErrMalformed, b[1], Version)
	case badReserved:
		return fmt.Errorf("%w: header bytes 2 and 3 are %d and %d, they must be zero", ErrMalformed, b[2], b[3])
	case badType:
		return fmt.Errorf("%w: unknown message type 0x%02x", ErrMalformed, typ)
	case badLength:
		want := map[byte]string{TypeRegister: "20", TypeRegistered: "12", TypeKeepalive: "12", TypeUnknown: "4", TypeData: "at least 12"}[typ]
		return fmt.Errorf("%w: %s is %s bytes, got %d", ErrMalformed, typeName(typ), want, len(b))
	case notWireGuard:
		return CheckWireGuard(b[HeaderLen:])
	}
	return fmt.Errorf("%w: problem %d", ErrMalformed, p)
}

// Parse decodes a datagram and checks its shape: the exact length of its
// type, and for DATA a payload that is a WireGuard message.
func Parse(b []byte) (Message, error) {
	typ, p := parse(b)
	if p != wellFormed {
		return Message{}, p.err(typ, b)
	}
	m := Message{Type: typ}
	switch typ {
	case TypeRegister:
		copy(m.Ticket[:], b[MsgHeaderLen:])
	case TypeRegistered, TypeKeepalive:
		copy(m.ID[:], b[MsgHeaderLen:])
	case TypeData:
		copy(m.ID[:], b[MsgHeaderLen:HeaderLen])
		m.Payload = b[HeaderLen:]
	}
	return m, nil
}

// CheckWireGuard returns nil when p has the type and size of a WireGuard
// message (initiation 148 bytes, response 92, cookie reply 64, transport at
// least 32), and otherwise says what is wrong.
func CheckWireGuard(p []byte) error {
	if wireGuardShape(p) == wellFormed {
		return nil
	}
	if len(p) < 4 {
		return fmt.Errorf("%w: a %d-byte payload is no WireGuard message (at least 32 bytes)", ErrMalformed, len(p))
	}
	if p[0] < 1 || p[0] > 4 || p[1] != 0 || p[2] != 0 || p[3] != 0 {
		return fmt.Errorf("%w: the payload is no WireGuard message: it starts %x, a WireGuard message starts with its type 1..4 and three zero bytes", ErrMalformed, p[:4])
	}
	want := map[byte]string{1: "148", 2: "92", 3: "64", 4: "32..65535"}[p[0]]
	return fmt.Errorf("%w: a WireGuard message of type %d is %s bytes, the payload has %d", ErrMalformed, p[0], want, len(p))
}

func putHeader(b []byte, typ byte) {
	b[0], b[1], b[2], b[3] = typ, Version, 0, 0
}

// AppendRegister appends a REGISTER message to dst.
func AppendRegister(dst []byte, t Ticket) []byte {
	return append(append(dst, TypeRegister, Version, 0, 0), t[:]...)
}

// AppendRegistered appends a REGISTERED message to dst.
func AppendRegistered(dst []byte, id ID) []byte {
	return append(append(dst, TypeRegistered, Version, 0, 0), id[:]...)
}

// AppendKeepalive appends a KEEPALIVE message (or its ack) to dst.
func AppendKeepalive(dst []byte, id ID) []byte {
	return append(append(dst, TypeKeepalive, Version, 0, 0), id[:]...)
}

// AppendUnknown appends an UNKNOWN message to dst.
func AppendUnknown(dst []byte) []byte {
	return append(dst, TypeUnknown, Version, 0, 0)
}

// AppendData appends a DATA message to dst: id is the destination from a
// client, the source from the relay.
func AppendData(dst []byte, id ID, payload []byte) []byte {
	return append(append(append(dst, TypeData, Version, 0, 0), id[:]...), payload...)
}
