package relay

import (
	"bytes"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestNodeID(t *testing.T) {
	// The first 8 bytes of SHA-256("lab/a") (sha256sum), in hex.
	if got := NodeID("lab", "a").String(); got != "0a714c41903a7972" {
		t.Fatalf("NodeID(lab, a) = %s, want 0a714c41903a7972", got)
	}
	if NodeID("lab", "a") == NodeID("lab", "b") {
		t.Fatal("distinct nodes share an ID")
	}
}

func TestParse(t *testing.T) {
	id := ID{1, 2, 3, 4, 5, 6, 7, 8}
	tk := Ticket{9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9}
	good := []struct {
		name string
		b    []byte
		want Message
	}{
		{"register", AppendRegister(nil, tk), Message{Type: TypeRegister, Ticket: tk}},
		{"registered", AppendRegistered(nil, id), Message{Type: TypeRegistered, ID: id}},
		{"keepalive", AppendKeepalive(nil, id), Message{Type: TypeKeepalive, ID: id}},
		{"unknown", AppendUnknown(nil), Message{Type: TypeUnknown}},
		{"initiation", AppendData(nil, id, wgMessage(1)), Message{Type: TypeData, ID: id}},
		{"response", AppendData(nil, id, wgMessage(2)), Message{Type: TypeData, ID: id}},
		{"cookie", AppendData(nil, id, wgMessage(3)), Message{Type: TypeData, ID: id}},
		{"keepalive transport", AppendData(nil, id, wgMessage(4)), Message{Type: TypeData, ID: id}},
		// 1420-byte MTU: a full packet is not padded to a multiple of 16.
		{"full transport", AppendData(nil, id, wgTransport(1452)), Message{Type: TypeData, ID: id}},
	}
	for _, c := range good {
		m, err := Parse(c.b)
		if err != nil {
			t.Errorf("%s: %v", c.name, err)
			continue
		}
		if c.want.Type == TypeData {
			c.want.Payload = c.b[HeaderLen:]
		}
		if m.Type != c.want.Type || m.ID != c.want.ID || m.Ticket != c.want.Ticket || !bytes.Equal(m.Payload, c.want.Payload) {
			t.Errorf("%s: parsed %+v, want %+v", c.name, m, c.want)
		}
	}
	bad := []struct {
		name, want string
		b          []byte
	}{
		{"empty", "0 bytes", nil},
		{"short", "3 bytes", []byte{TypeUnknown, 1, 0}},
		{"version", "version 2", []byte{TypeUnknown, 2, 0, 0}},
		{"reserved", "must be zero", []byte{TypeUnknown, 1, 0, 1}},
		{"type", "unknown message type 0x04", []byte{4, 1, 0, 0}},
		{"register short", "REGISTER is 20 bytes, got 19", AppendRegister(nil, tk)[:19]},
		{"register long", "REGISTER is 20 bytes, got 21", append(AppendRegister(nil, tk), 0)},
		{"registered short", "REGISTERED is 12 bytes", AppendRegistered(nil, id)[:11]},
		{"keepalive long", "KEEPALIVE is 12 bytes, got 13", append(AppendKeepalive(nil, id), 0)},
		{"unknown long", "UNKNOWN is 4 bytes, got 5", append(AppendUnknown(nil), 0)},
		{"data short", "DATA is at least 12 bytes, got 11", AppendData(nil, id, nil)[:11]},
		{"data empty", "a 0-byte payload", AppendData(nil, id, nil)},
		{"not wireguard", "it starts 706c6169", AppendData(nil, id, []byte("plain text, no WireGuard message"))},
		{"type 5", "starts 05000000", AppendData(nil, id, append([]byte{5, 0, 0, 0}, make([]byte, 60)...))},
		{"initiation size", "type 1 is 148 bytes, the payload has 149", AppendData(nil, id, append(wgMessage(1), 0))},
		{"response size", "type 2 is 92 bytes", AppendData(nil, id, wgMessage(2)[:91])},
		{"cookie size", "type 3 is 64 bytes", AppendData(nil, id, append(wgMessage(3), 0))},
		{"transport size", "type 4 is 32..65535 bytes, the payload has 31", AppendData(nil, id, wgTransport(31))},
	}
	for _, c := range bad {
		_, err := Parse(c.b)
		if err == nil || !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want ErrMalformed saying %q", c.name, err, c.want)
		}
	}
}

func FuzzParse(f *testing.F) {
	id := NodeID("lab", "a")
	f.Add(AppendRegister(nil, Ticket{1, 2, 3}))
	f.Add(AppendRegistered(nil, id))
	f.Add(AppendKeepalive(nil, id))
	f.Add(AppendUnknown(nil))
	for typ := byte(1); typ <= 4; typ++ {
		f.Add(AppendData(nil, id, wgMessage(typ)))
	}
	f.Add(AppendData(nil, id, wgTransport(1452)))
	f.Add([]byte{TypeData, 1, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		in := bytes.Clone(b)
		m, err := Parse(b)
		if !bytes.Equal(in, b) {
			t.Fatal("Parse changed its input")
		}
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v does not wrap ErrMalformed", err)
			}
			if _, p := parse(b); p == wellFormed {
				t.Fatalf("Parse fails (%v) where the hot path accepts %x", err, b)
			}
			return
		}
		if _, p := parse(b); p != wellFormed {
			t.Fatalf("Parse accepts %x where the hot path says %d", b, p)
		}
		// What parses encodes back to the same bytes.
		var again []byte
		switch m.Type {
		case TypeRegister:
			again = AppendRegister(nil, m.Ticket)
		case TypeRegistered:
			again = AppendRegistered(nil, m.ID)
		case TypeKeepalive:
			again = AppendKeepalive(nil, m.ID)
		case TypeUnknown:
			again = AppendUnknown(nil)
		case TypeData:
			if err := CheckWireGuard(m.Payload); err != nil {
				t.Fatalf("accepted DATA with a payload that is no WireGuard message: %v", err)
			}
			again = AppendData(nil, m.ID, m.Payload)
		default:
			t.Fatalf("accepted type 0x%x", m.Type)
		}
		if !bytes.Equal(again, b) {
			t.Fatalf("%x parsed as %+v, which encodes as %x", b, m, again)
		}
	})
}

// FuzzHandle feeds the relay arbitrary datagrams from a registered node
// and from a stranger: whatever comes in, the relay sends nothing larger
// than what it got (no amplification), forwards to another address only
// DATA with a WireGuard payload from the registered node, and answers a
// stranger with at most UNKNOWN.
func FuzzHandle(f *testing.F) {
	s, err := NewServer(ServerConfig{Conn: loopback(f)})
	if err != nil {
		f.Fatal(err)
	}
	a, b := netip.MustParseAddrPort("127.0.0.1:1000"), netip.MustParseAddrPort("127.0.0.1:2000")
	stranger := netip.MustParseAddrPort("127.0.0.1:3000")
	ida, idb := NodeID("lab", "a"), NodeID("lab", "b")
	now := time.Now().UnixNano()
	for _, n := range []struct {
		id   ID
		addr netip.AddrPort
	}{{ida, a}, {idb, b}} {
		tk, _ := s.Ticket(n.id)
		if _, ok := s.register(tk, n.addr, now); !ok {
			f.Fatal("registering")
		}
	}
	f.Add(AppendData(nil, idb, wgTransport(100)), false)
	f.Add(AppendData(nil, ida, wgMessage(1)), true)
	f.Add(AppendKeepalive(nil, ida), false)
	f.Add(AppendRegister(nil, Ticket{}), true)
	f.Fuzz(func(t *testing.T, in []byte, fromStranger bool) {
		from := a
		if fromStranger {
			from = stranger
		}
		var st batchStats
		d := datagram{buf: bytes.Clone(in), addr: from}
		now++
		out := s.handle(&d, now, nil, &st)
		for _, o := range out {
			if len(o.buf) > len(in) {
				t.Fatalf("answered %d bytes with %d to %v", len(in), len(o.buf), o.addr)
			}
			switch {
			case o.addr == from && fromStranger:
				if !bytes.Equal(o.buf, AppendUnknown(nil)) {
					t.Fatalf("a stranger got %x", o.buf)
				}
			case o.addr == from:
			case fromStranger:
				t.Fatalf("a stranger's %x went to %v", in, o.addr)
			default:
				if o.addr != b || in[0] != TypeData || CheckWireGuard(o.buf[HeaderLen:]) != nil || ID(o.buf[MsgHeaderLen:HeaderLen]) != ida {
					t.Fatalf("forwarded %x to %v", o.buf, o.addr)
				}
			}
		}
	})
}
