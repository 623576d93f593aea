package bpf

import (
	"fmt"
	"testing"
)

// TestLazyWorkloadPrograms: with the workload programs loading in the
// background, attaching a workload right after Open waits for them and the
// policy is enforced on real traffic, as with a full Open.
func TestLazyWorkloadPrograms(t *testing.T) {
	tp := newTopo(t)
	d := setupTopo(t, tp, Config{Ephemeral: true, LazyWorkloadPrograms: true})
	listen(t, tp.b, fmt.Sprintf("%s:%d", topoB, tcpPort))
	target := fmt.Sprintf("%s:%d", topoB, tcpPort)
	if c, err := dial(t, tp.a, target); err == nil {
		c.Close()
		t.Fatal("B is deny-by-default on ingress, yet A connected")
	}
	must(t, d.SetPolicy(epB, allowAtoB, nil))
	c, err := dial(t, tp.a, target)
	if err != nil {
		t.Fatalf("connecting after the allow rule: %v", err)
	}
	defer c.Close()
	must(t, roundTrip(c, "lazy"))
}

// TestLazyCloseWhileLoading: closing a datapath whose workload programs are
// still loading waits for them and releases everything.
func TestLazyCloseWhileLoading(t *testing.T) {
	newTopo(t) // privileged
	d, err := Open(Config{Ephemeral: true, LazyWorkloadPrograms: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if d.objs.WeftFromWl != nil && d.objs.WeftFromWl.FD() > 0 {
		t.Fatal("the workload program is still open after Close")
	}
}
