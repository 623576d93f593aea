package peercred

import (
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestPIDIsTheListener(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	pid, err := PID(path, time.Second)
	if err != nil || pid != os.Getpid() {
		t.Fatalf("PID = %d, %v; want %d", pid, err, os.Getpid())
	}
	if _, err := PID(filepath.Join(t.TempDir(), "none.sock"), time.Second); err == nil {
		t.Fatal("PID of a socket nobody listens on: no error")
	}
}
