package main

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/weftmesh/weft/internal/ociimage"
)

func TestBuildsAnImage(t *testing.T) {
	dir := t.TempDir()
	agent := filepath.Join(dir, "weft-agent")
	if err := os.WriteFile(agent, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "img.tar")
	var stderr bytes.Buffer
	err := run([]string{"-o", out, "--name", "registry.local/weft:dev",
		"--file", agent + ":/usr/bin/weft-agent", "--file", agent + ":/etc/weft/hook:0700",
		"--entrypoint", "/usr/bin/weft-agent", "--cmd", "--config", "--cmd", "/etc/weft/agent.yaml",
		"--env", "WEFT_LOG=debug"}, &stderr)
	if err != nil {
		t.Fatalf("%v (%s)", err, stderr.String())
	}
	data, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	blobs := map[string][]byte{}
	tr := tar.NewReader(bytes.NewReader(data))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(tr)
		blobs[h.Name] = b
	}
	var index ociimage.Index
	if err := json.Unmarshal(blobs["index.json"], &index); err != nil || len(index.Manifests) != 1 {
		t.Fatalf("index.json: %v %+v", err, index)
	}
	if got := index.Manifests[0].Annotations[ociimage.AnnotationContainerdName]; got != "registry.local/weft:dev" {
		t.Errorf("image name %q", got)
	}
	blob := func(d string) []byte { return blobs["blobs/sha256/"+strings.TrimPrefix(d, "sha256:")] }
	var man ociimage.Manifest
	_ = json.Unmarshal(blob(index.Manifests[0].Digest), &man)
	var cfg ociimage.Config
	_ = json.Unmarshal(blob(man.Config.Digest), &cfg)
	if strings.Join(cfg.Config.Entrypoint, " ") != "/usr/bin/weft-agent" || strings.Join(cfg.Config.Cmd, " ") != "--config /etc/weft/agent.yaml" {
		t.Errorf("entrypoint %v cmd %v", cfg.Config.Entrypoint, cfg.Config.Cmd)
	}
	modes := map[string]int64{}
	lr := tar.NewReader(bytes.NewReader(blob(man.Layers[0].Digest)))
	for {
		h, err := lr.Next()
		if err != nil {
			break
		}
		modes[h.Name] = h.Mode
	}
	if modes["usr/bin/weft-agent"] != 0o755 || modes["etc/weft/hook"] != 0o700 {
		t.Errorf("layer modes %v: want the source's 0755 and the given 0700", modes)
	}
}

func TestRefuses(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "img.tar")
	f := filepath.Join(dir, "f")
	if err := os.WriteFile(f, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"--name", "registry.local/x:1", "--busybox"}, "-o and --name are required"},
		{[]string{"-o", out, "--name", "registry.local/x:1"}, "would be empty"},
		{[]string{"-o", out, "--name", "registry.local/x:1", "--file", "justone"}, "want SRC:DST"},
		{[]string{"-o", out, "--name", "registry.local/x:1", "--file", f + ":/h:999"}, "not an octal permission"},
		{[]string{"-o", out, "--name", "registry.local/x:1", "--file", "/nonexistent:/x"}, "no such file"},
		{[]string{"-o", out, "--name", "registry.local/x:1", "--file", dir + ":/x"}, "not a regular file"},
		{[]string{"-o", out, "--name", "x", "--file", f + ":/h"}, "not a full image reference"},
		{[]string{"-o", out, "--name", "registry.local/x:1", "stray"}, "unexpected argument"},
	}
	if _, err := os.Stat("/bin/ls"); err == nil && ociimage.CheckStatic("/bin/ls") != nil {
		cases = append(cases, struct {
			args []string
			want string
		}{[]string{"-o", out, "--name", "registry.local/x:1", "--file", "/bin/ls:/ls"}, "dynamically linked"})
	}
	for _, c := range cases {
		err := run(c.args, io.Discard)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: err = %v, want one saying %q", c.args, err, c.want)
		}
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Errorf("a failed run left %s", out)
	}
}
