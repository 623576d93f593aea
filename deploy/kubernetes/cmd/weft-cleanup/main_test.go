package main

import (
	"bytes"
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// fakeBinary writes an executable that records its arguments in log and
// exits with code.
func fakeBinary(t *testing.T, dir, name, log string, code int) string {
	t.Helper()
	p := filepath.Join(dir, name)
	script := "#!/bin/sh\necho \"" + name + " $*\" >> " + log + "\necho " + name + " ran\nexit " + string(rune('0'+code)) + "\n"
	if err := os.WriteFile(p, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

type fixture struct {
	c   cleanup
	log string
	out *bytes.Buffer
}

func newFixture(t *testing.T, cniCode, agentCode int) *fixture {
	dir := t.TempDir()
	f := &fixture{log: filepath.Join(dir, "calls"), out: &bytes.Buffer{}}
	f.c = cleanup{
		socket:      filepath.Join(dir, "run", "agent.sock"),
		config:      filepath.Join(dir, "state", "agent.yaml"),
		binDir:      "/host/opt/cni/bin",
		confDir:     "/host/etc/cni/net.d",
		doneFile:    filepath.Join(dir, "done", "done"),
		agentWait:   5 * time.Second,
		poll:        20 * time.Millisecond,
		cniBinary:   fakeBinary(t, dir, "weft-cni", filepath.Join(dir, "calls"), cniCode),
		agentBinary: fakeBinary(t, dir, "weft-agent", filepath.Join(dir, "calls"), agentCode),
		node:        "node-1",
		out:         f.out,
	}
	return f
}

func (f *fixture) writeConfig(t *testing.T) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(f.c.config), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(f.c.config, []byte("nodeName: node-1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
}

// calls lists the fake binaries' runs, in order.
func (f *fixture) calls() []string {
	data, _ := os.ReadFile(f.log)
	if len(data) == 0 {
		return nil
	}
	return strings.Split(strings.TrimSpace(string(data)), "\n")
}

func TestCleanupRemovesPluginThenDatapath(t *testing.T) {
	f := newFixture(t, 0, 0)
	f.writeConfig(t)
	if err := f.c.run(context.Background()); err != nil {
		t.Fatalf("run: %v\n%s", err, f.out)
	}
	want := []string{
		"weft-cni uninstall --bin-dir /host/opt/cni/bin --conf-dir /host/etc/cni/net.d",
		"weft-agent --config " + f.c.config + " teardown",
	}
	if got := f.calls(); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("steps:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	out := f.out.String()
	if !strings.Contains(out, RemovedMessage+" from node node-1") || !strings.Contains(out, "weft-cni ran") {
		t.Errorf("log lacks the steps' output or %q:\n%s", RemovedMessage, out)
	}
	if err := checkDone(f.c.doneFile); err != nil {
		t.Errorf("readiness check after a clean run: %v", err)
	}
}

func TestCleanupWithoutConfigurationSkipsTeardown(t *testing.T) {
	f := newFixture(t, 0, 0)
	if err := f.c.run(context.Background()); err != nil {
		t.Fatalf("run: %v\n%s", err, f.out)
	}
	got := f.calls()
	if len(got) != 1 || !strings.HasPrefix(got[0], "weft-cni uninstall") {
		t.Errorf("steps %q, want weft-cni uninstall alone", got)
	}
	if !strings.Contains(f.out.String(), "never joined") {
		t.Errorf("log does not say why the teardown is skipped:\n%s", f.out)
	}
}

func TestCleanupFailedStepIsNotDone(t *testing.T) {
	f := newFixture(t, 3, 0)
	f.writeConfig(t)
	err := f.c.run(context.Background())
	if err == nil || !strings.Contains(err.Error(), "removing weft-cni") {
		t.Fatalf("run with a failing weft-cni: %v, want an error naming the step", err)
	}
	// The teardown still ran: one run reports everything that is left.
	if got := f.calls(); len(got) != 2 {
		t.Errorf("steps %q, want both", got)
	}
	if checkDone(f.c.doneFile) == nil {
		t.Error("the node is marked done after a failed step")
	}
	if strings.Contains(f.out.String(), RemovedMessage) {
		t.Errorf("log says %q after a failed step:\n%s", RemovedMessage, f.out)
	}
}

func TestCleanupWaitsForTheAgentToStop(t *testing.T) {
	f := newFixture(t, 0, 0)
	if err := os.MkdirAll(filepath.Dir(f.c.socket), 0o700); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("unix", f.c.socket)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	stopped := make(chan struct{})
	go func() {
		time.Sleep(300 * time.Millisecond)
		if len(f.calls()) != 0 {
			t.Error("a step ran while the agent still answered")
		}
		l.Close() // a unix listener removes its socket file
		close(stopped)
	}()
	if err := f.c.run(context.Background()); err != nil {
		t.Fatalf("run: %v\n%s", err, f.out)
	}
	<-stopped
	if !strings.Contains(f.out.String(), "an agent still answers") {
		t.Errorf("log does not say it waited for the agent:\n%s", f.out)
	}
}

func TestCleanupGivesUpOnARunningAgent(t *testing.T) {
	f := newFixture(t, 0, 0)
	f.c.agentWait = 100 * time.Millisecond
	if err := os.MkdirAll(filepath.Dir(f.c.socket), 0o700); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("unix", f.c.socket)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	err = f.c.run(context.Background())
	if err == nil || !strings.Contains(err.Error(), "remove the weft-agent DaemonSet first") {
		t.Fatalf("run beside a running agent: %v, want the advice to remove the DaemonSet", err)
	}
	if got := f.calls(); len(got) != 0 {
		t.Errorf("steps %q ran beside a running agent", got)
	}
}

func TestCheckFlag(t *testing.T) {
	done := filepath.Join(t.TempDir(), "done")
	var out, errOut bytes.Buffer
	if code := run([]string{"weft-cleanup", "--done-file", done, "--check"}, &out, &errOut); code != 1 {
		t.Errorf("--check before the node is done: exit %d, want 1", code)
	}
	if err := os.WriteFile(done, []byte(RemovedMessage+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if code := run([]string{"weft-cleanup", "--done-file", done, "--check"}, &out, &errOut); code != 0 {
		t.Errorf("--check once done: exit %d, want 0 (%s)", code, errOut.String())
	}
	if code := run([]string{"weft-cleanup", "--check"}, &out, &errOut); code != 1 || !strings.Contains(errOut.String(), "needs --done-file") {
		t.Errorf("--check without --done-file: exit %d, %q", code, errOut.String())
	}
}
