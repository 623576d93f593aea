package bpf

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// tc clsact fallback: the filter's place on the hook, fixed so that a
// restarted agent replaces its own filter instead of adding a second one.
const (
	tcPriority = 1
	tcHandle   = 0x57ef
	tcPrefix   = "weft_"
)

type hookSide struct {
	name     string
	prog     *ebpf.Program
	tcx      ebpf.AttachType
	tcParent uint32
}

// attachKind says which programs an interface carries.
type attachKind int

const (
	kindWorkload attachKind = iota
	kindHostDevice
	kindUnderlay
)

// attachment is what this process holds for one interface.
type attachment struct {
	iface   string
	ifindex int
	kind    attachKind
	links   []link.Link // TCX links (pinned unless ephemeral)
	filters []*netlink.BpfFilter
}

// release closes this process's handles; pinned links and tc filters keep
// the programs attached.
func (a *attachment) release() {
	for _, l := range a.links {
		l.Close()
	}
	a.links = nil
}

// detach removes the programs from the interface.
func (a *attachment) detach() error {
	var errs []error
	for _, l := range a.links {
		if err := l.Unpin(); err != nil {
			errs = append(errs, fmt.Errorf("unpinning link on %s: %w", a.iface, err))
		}
		if err := l.Close(); err != nil {
			errs = append(errs, fmt.Errorf("detaching from %s: %w", a.iface, err))
		}
	}
	for _, f := range a.filters {
		if err := netlink.FilterDel(f); err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.ENODEV) {
			errs = append(errs, fmt.Errorf("removing tc filter from %s: %w", a.iface, err))
		}
	}
	a.links, a.filters = nil, nil
	return errors.Join(errs...)
}

// AttachWorkload attaches the workload programs to the host end of a
// workload's veth: tc ingress judges what the workload sends (its egress
// policy), tc egress what it receives (its ingress policy). The interface
// is looked up in the calling thread's network namespace. Attaching again,
// also from a restarted agent, replaces the programs without a gap.
//
// The programs accept from the veth only the addresses of the endpoint
// behind it: the endpoint addresses the node routes to iface (its host
// routes) are bound to it here, before the programs are replaced, and by
// UpsertEndpoint for addresses registered later.
func (d *Datapath) AttachWorkload(iface string) error {
	if err := d.workloadPrograms(); err != nil {
		return err
	}
	if err := validIfaceName(iface); err != nil {
		return err
	}
	ifc, err := net.InterfaceByName(iface)
	if err != nil {
		return fmt.Errorf("bpf: attaching to %s: no such interface in this network namespace: %w", iface, err)
	}
	if err := d.bindWorkloadAddrs(ifc.Index); err != nil {
		return fmt.Errorf("bpf: binding the addresses routed to %s: %w", iface, err)
	}
	if err := d.attach(iface, kindWorkload, d.objs.WeftFromWl, d.objs.WeftToWl); err != nil {
		return err
	}
	// Again, for an endpoint written while the veth was not yet known as
	// attached (UpsertEndpoint binds only to attached veths).
	if err := d.bindWorkloadAddrs(ifc.Index); err != nil {
		return fmt.Errorf("bpf: binding the addresses routed to %s: %w", iface, err)
	}
	return nil
}

// AttachHostDevice attaches the host-endpoint programs to the node's mesh
// device (WireGuard or TUN, no Ethernet header): tc ingress judges what the
// mesh sends to the host endpoint, tc egress what the host endpoint sends.
// The device is also the one interface through which a packet to a
// workload may carry another node's mesh address: its ifindex goes to the
// programs' settings.
func (d *Datapath) AttachHostDevice(iface string) error {
	if err := validIfaceName(iface); err != nil {
		return err
	}
	ifc, err := net.InterfaceByName(iface)
	if err != nil {
		return fmt.Errorf("bpf: attaching to %s: no such interface in this network namespace: %w", iface, err)
	}
	if err := d.updateSettings(func(s *datapathSettings) { s.WgIfindex = uint32(ifc.Index) }); err != nil {
		return err
	}
	return d.attach(iface, kindHostDevice, d.objs.WeftFromDev, d.objs.WeftToDev)
}

// AttachUnderlay attaches the anti-spoofing program to the ingress of an
// interface holding one of the node's underlay addresses: it drops packets
// carrying a mesh address (mesh traffic travels only inside WireGuard) and,
// in strict mode, plaintext from other mesh nodes (SetStrict); everything
// else passes untouched. Interfaces without an Ethernet header get the L3
// variant. Attaching again replaces the program without a gap.
func (d *Datapath) AttachUnderlay(iface string) error {
	if err := d.workloadPrograms(); err != nil {
		return err
	}
	if err := validIfaceName(iface); err != nil {
		return err
	}
	ifc, err := net.InterfaceByName(iface)
	if err != nil {
		return fmt.Errorf("bpf: attaching to %s: no such interface in this network namespace: %w", iface, err)
	}
	prog := d.objs.WeftFromUnderlay
	if len(ifc.HardwareAddr) == 0 {
		prog = d.objs.WeftFromUnderlay3
	}
	return d.attach(iface, kindUnderlay, prog, nil)
}

func validIfaceName(iface string) error {
	if iface == "" || len(iface) > 15 || strings.ContainsAny(iface, "/@ ") {
		return fmt.Errorf("bpf: interface name %q is invalid: 1-15 characters, no '/', '@' or space", iface)
	}
	return nil
}

// attach attaches ingress and, unless nil, egress to iface.
func (d *Datapath) attach(iface string, kind attachKind, ingress, egress *ebpf.Program) error {
	if err := validIfaceName(iface); err != nil {
		return err
	}
	ifc, err := net.InterfaceByName(iface)
	if err != nil {
		return fmt.Errorf("bpf: attaching to %s: no such interface in this network namespace: %w", iface, err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return fmt.Errorf("bpf: attaching to %s: datapath is closed", iface)
	}
	a := &attachment{iface: iface, ifindex: ifc.Index, kind: kind}
	sides := []hookSide{{"ingress", ingress, ebpf.AttachTCXIngress, netlink.HANDLE_MIN_INGRESS}}
	if egress != nil {
		sides = append(sides, hookSide{"egress", egress, ebpf.AttachTCXEgress, netlink.HANDLE_MIN_EGRESS})
	}
	for _, s := range sides {
		if d.cfg.Attach != AttachTC {
			l, err := d.attachTCX(a, s)
			if err == nil {
				a.links = append(a.links, l)
				continue
			}
			if d.cfg.Attach == AttachTCX || !errors.Is(err, ebpf.ErrNotSupported) {
				d.rollback(a)
				return err
			}
			d.log.Info("TCX not supported by this kernel, using tc clsact", "iface", iface, "err", err)
		}
		f, err := attachTC(a, s)
		if err != nil {
			d.rollback(a)
			return err
		}
		a.filters = append(a.filters, f)
	}
	if len(a.filters) > 0 && d.dir != "" {
		// tc filters leave no pin: a mark tells a later Remove (another
		// process, after a restart) which interfaces to clean. bpffs
		// holds no regular files, so the mark is a directory.
		if err := os.Mkdir(d.tcMark(iface), 0o700); err != nil && !errors.Is(err, os.ErrExist) {
			d.log.Warn("recording a tc attachment", "iface", iface, "err", err)
		}
	}
	if old := d.attached[iface]; old != nil {
		old.release()
	}
	d.attached[iface] = a
	d.log.Info("datapath attached", "iface", iface, "ifindex", ifc.Index, "tcx", len(a.links), "tc", len(a.filters))
	return nil
}

// rollback undoes a partial attach; a replaced pinned link keeps running
// the new program, which is as good as the old one.
func (d *Datapath) rollback(a *attachment) {
	if d.dir != "" {
		a.release()
		return
	}
	_ = a.detach()
}

func (d *Datapath) linkPin(iface, side string) string {
	if d.dir == "" {
		return ""
	}
	return filepath.Join(d.dir, "links", iface+"@"+side)
}

// tcMark is the directory recording that iface carries tc filters.
func (d *Datapath) tcMark(iface string) string {
	return filepath.Join(d.dir, "links", iface+"@tc")
}

func (d *Datapath) attachTCX(a *attachment, s hookSide) (link.Link, error) {
	pin := d.linkPin(a.iface, s.name)
	if pin != "" {
		l, err := link.LoadPinnedLink(pin, nil)
		switch {
		case err == nil:
			info, ierr := l.Info()
			if ierr == nil && info.TCX() != nil && int(info.TCX().Ifindex) == a.ifindex {
				if err := l.Update(s.prog); err != nil {
					l.Close()
					return nil, fmt.Errorf("bpf: replacing the program on %s %s: %w", a.iface, s.name, err)
				}
				return l, nil
			}
			// The interface went away (and its link with it) or was
			// recreated under the same name: attach afresh.
			_ = l.Unpin()
			l.Close()
		case !errors.Is(err, os.ErrNotExist):
			_ = os.Remove(pin)
		}
	}
	l, err := link.AttachTCX(link.TCXOptions{Interface: a.ifindex, Program: s.prog, Attach: s.tcx})
	if err != nil {
		return nil, fmt.Errorf("bpf: attaching to %s %s with TCX: %w", a.iface, s.name, err)
	}
	if pin != "" {
		if err := l.Pin(pin); err != nil {
			l.Close()
			return nil, fmt.Errorf("bpf: pinning the link on %s %s: %w", a.iface, s.name, err)
		}
	}
	return l, nil
}

func attachTC(a *attachment, s hookSide) (*netlink.BpfFilter, error) {
	qdisc := &netlink.GenericQdisc{
		QdiscAttrs: netlink.QdiscAttrs{LinkIndex: a.ifindex, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT},
		QdiscType:  "clsact",
	}
	if err := netlink.QdiscAdd(qdisc); err != nil && !errors.Is(err, unix.EEXIST) {
		return nil, fmt.Errorf("bpf: adding clsact qdisc to %s: %w", a.iface, err)
	}
	f := &netlink.BpfFilter{
		FilterAttrs: netlink.FilterAttrs{
			LinkIndex: a.ifindex,
			Parent:    s.tcParent,
			Handle:    tcHandle,
			Protocol:  unix.ETH_P_ALL,
			Priority:  tcPriority,
		},
		Fd:           s.prog.FD(),
		Name:         tcPrefix + s.name,
		DirectAction: true,
	}
	if err := netlink.FilterReplace(f); err != nil {
		return nil, fmt.Errorf("bpf: adding tc %s filter to %s: %w", s.name, a.iface, err)
	}
	return f, nil
}

// Detach removes Weft's programs from an interface, whichever process
// attached them. It returns ErrNotAttached when there were none. Like
// attaching, it acts in the calling thread's network namespace.
func (d *Datapath) Detach(iface string) error {
	if err := validIfaceName(iface); err != nil {
		return err
	}
	d.mu.Lock()
	a := d.attached[iface]
	delete(d.attached, iface)
	d.mu.Unlock()

	found := false
	var errs []error
	if a != nil {
		found = true
		errs = append(errs, a.detach())
	}
	for _, side := range []string{"ingress", "egress"} {
		pin := d.linkPin(iface, side)
		if pin == "" {
			continue
		}
		l, err := link.LoadPinnedLink(pin, nil)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		found = true
		if err != nil {
			errs = append(errs, os.Remove(pin))
			continue
		}
		errs = append(errs, l.Unpin(), l.Close())
	}
	if d.dir != "" {
		if err := os.Remove(d.tcMark(iface)); err == nil {
			found = true
		}
	}
	if nl, err := netlink.LinkByName(iface); err == nil {
		for _, parent := range []uint32{netlink.HANDLE_MIN_INGRESS, netlink.HANDLE_MIN_EGRESS} {
			filters, err := netlink.FilterList(nl, parent)
			if err != nil {
				continue
			}
			for _, f := range filters {
				if bf, ok := f.(*netlink.BpfFilter); ok && strings.HasPrefix(bf.Name, tcPrefix) {
					found = true
					if err := netlink.FilterDel(bf); err != nil && !errors.Is(err, unix.ENOENT) {
						errs = append(errs, fmt.Errorf("bpf: removing tc filter from %s: %w", iface, err))
					}
				}
			}
		}
	}
	if !found {
		return fmt.Errorf("%w: %s", ErrNotAttached, iface)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("bpf: detaching from %s: %w", iface, err)
	}
	return nil
}
