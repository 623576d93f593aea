package bpf

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"time"

	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"
)

// EventReader reads flow events from the datapath's ring buffer. One
// reader per datapath: events are consumed, not broadcast.
type EventReader struct {
	rd   *ringbuf.Reader
	boot time.Time // wall-clock time of monotonic zero
}

// Events opens a reader on the events ring buffer.
func (d *Datapath) Events() (*EventReader, error) {
	rd, err := ringbuf.NewReader(d.objs.Events)
	if err != nil {
		return nil, fmt.Errorf("bpf: opening the events ring buffer: %w", err)
	}
	return &EventReader{rd: rd, boot: monotonicZero()}, nil
}

func monotonicZero() time.Time {
	var ts unix.Timespec
	now := time.Now()
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return time.Time{}
	}
	return now.Add(-time.Duration(ts.Nano()))
}

// Read blocks until an event arrives, the deadline passes
// (os.ErrDeadlineExceeded) or the reader is closed (os.ErrClosed).
func (r *EventReader) Read() (Event, error) {
	for {
		rec, err := r.rd.Read()
		if errors.Is(err, ringbuf.ErrClosed) {
			return Event{}, fmt.Errorf("bpf: events reader: %w", os.ErrClosed)
		}
		if err != nil {
			return Event{}, fmt.Errorf("bpf: reading events: %w", err)
		}
		ev, err := decodeEvent(rec.RawSample, r.boot)
		if err != nil {
			continue // a record this version does not understand: skip it
		}
		return ev, nil
	}
}

// SetDeadline makes Read return os.ErrDeadlineExceeded after t; the zero
// time means no deadline.
func (r *EventReader) SetDeadline(t time.Time) { r.rd.SetDeadline(t) }

// Close stops the reader; a blocked Read returns.
func (r *EventReader) Close() error { return r.rd.Close() }

// eventNodeControl is EVENT_F_NODE_CONTROL: the event's connection passed
// as control traffic between nodes (lib/node.h).
const eventNodeControl = 1

var eventSize = binary.Size(datapathEvent{})

// decodeEvent turns a raw ring buffer record into an Event.
func decodeEvent(raw []byte, boot time.Time) (Event, error) {
	if len(raw) < eventSize {
		return Event{}, fmt.Errorf("bpf: event record of %d bytes, want at least %d", len(raw), eventSize)
	}
	var e datapathEvent
	// Decode, not Read: the record is already in memory, so no reader and
	// no second copy per event.
	if _, err := binary.Decode(raw[:eventSize], binary.NativeEndian, &e); err != nil {
		return Event{}, fmt.Errorf("bpf: decoding event: %w", err)
	}
	t := EventType(e.Type)
	if t != EventDrop && t != EventNewConn {
		return Event{}, fmt.Errorf("bpf: unknown event type %d", e.Type)
	}
	if e.Dir > 1 {
		return Event{}, fmt.Errorf("bpf: event direction %d is invalid", e.Dir)
	}
	ev := Event{
		Type:        t,
		Reason:      DropReason(e.Reason),
		Direction:   Direction(e.Dir),
		EndpointID:  e.EpId,
		SrcIdentity: e.SrcIdentity,
		DstIdentity: e.DstIdentity,
		Protocol:    e.Proto,
		SrcPort:     e.Sport,
		DstPort:     e.Dport,
		TCPFlags:    e.TcpFlags,
		Length:      e.Len,
		Ifindex:     e.Ifindex,
		L3:          e.L3 != 0,
		NodeControl: e.Flags&eventNodeControl != 0,
		Time:        boot.Add(time.Duration(e.Ts)),
	}
	if e.Family != 0 { // 0: dropped before the addresses were parsed
		ev.Src = netip.AddrFrom16(e.Saddr).Unmap()
		ev.Dst = netip.AddrFrom16(e.Daddr).Unmap()
	}
	return ev, nil
}

// Metrics reads the counters, summed over CPUs.
func (d *Datapath) Metrics() (Metrics, error) {
	var m Metrics
	var per []datapathMetricValue
	sum := func(idx uint32) (uint64, uint64, error) {
		if err := d.objs.Metrics.Lookup(idx, &per); err != nil {
			return 0, 0, fmt.Errorf("bpf: reading counter %d: %w", idx, err)
		}
		var p, b uint64
		for _, v := range per {
			p += v.Packets
			b += v.Bytes
		}
		return p, b, nil
	}
	for dir := range 2 {
		for dropped := range 2 {
			for reason := range numReasons {
				idx := uint32((dir*2+dropped)*numReasons + reason)
				p, b, err := sum(idx)
				if err != nil {
					return Metrics{}, err
				}
				if p == 0 {
					continue
				}
				m.Counters = append(m.Counters, Counter{
					Direction: Direction(dir), Dropped: dropped == 1, Reason: DropReason(reason), Packets: p, Bytes: b,
				})
			}
		}
	}
	var err error
	if m.EventsLost, _, err = sum(2 * 2 * numReasons); err != nil {
		return Metrics{}, err
	}
	if m.DropEventsSuppressed, _, err = sum(2*2*numReasons + 1); err != nil {
		return Metrics{}, err
	}
	return m, nil
}
