package bpf

import (
	"encoding/binary"
	"net/netip"
)

// pkt describes a test packet; bytes() renders it with an Ethernet header
// unless l3 is set (WireGuard/TUN devices carry none). Checksums are left
// zero: the programs do not verify them.
type pkt struct {
	l3       bool
	src, dst string
	proto    uint8
	sport    uint16
	dport    uint16
	tcpFlags uint8
	icmpType uint8
	echoID   uint16
}

const (
	tcpFIN = 0x01
	tcpSYN = 0x02
	tcpRST = 0x04
	tcpACK = 0x10
)

func (p pkt) bytes() []byte {
	src, dst := netip.MustParseAddr(p.src), netip.MustParseAddr(p.dst)
	var l4 []byte
	switch p.proto {
	case 6:
		l4 = make([]byte, 20)
		binary.BigEndian.PutUint16(l4[0:], p.sport)
		binary.BigEndian.PutUint16(l4[2:], p.dport)
		l4[12] = 5 << 4
		l4[13] = p.tcpFlags
	case 17:
		l4 = make([]byte, 8)
		binary.BigEndian.PutUint16(l4[0:], p.sport)
		binary.BigEndian.PutUint16(l4[2:], p.dport)
		binary.BigEndian.PutUint16(l4[4:], 8)
	case 1, 58:
		l4 = make([]byte, 8)
		l4[0] = p.icmpType
		binary.BigEndian.PutUint16(l4[4:], p.echoID)
	}
	var ip []byte
	ethType := uint16(0x0800)
	if src.Is4() {
		ip = make([]byte, 20)
		ip[0] = 0x45
		binary.BigEndian.PutUint16(ip[2:], uint16(20+len(l4)))
		ip[8] = 64
		ip[9] = p.proto
		s, d := src.As4(), dst.As4()
		copy(ip[12:], s[:])
		copy(ip[16:], d[:])
	} else {
		ethType = 0x86DD
		ip = make([]byte, 40)
		ip[0] = 0x60
		binary.BigEndian.PutUint16(ip[4:], uint16(len(l4)))
		ip[6] = p.proto
		ip[7] = 64
		s, d := src.As16(), dst.As16()
		copy(ip[8:], s[:])
		copy(ip[24:], d[:])
	}
	out := append(ip, l4...)
	if p.l3 {
		return out
	}
	eth := make([]byte, 14)
	copy(eth[0:], []byte{0x02, 0, 0, 0, 0, 1})
	copy(eth[6:], []byte{0x02, 0, 0, 0, 0, 2})
	binary.BigEndian.PutUint16(eth[12:], ethType)
	return append(eth, out...)
}
