package ociimage

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// layout is an OCI layout read back from a tar, the way an importer reads
// it: index.json, then every blob by digest.
type layout struct {
	names []string // tar entry names in order
	index Index
	blobs map[string][]byte // by digest "sha256:..."
}

func readLayout(t *testing.T, data []byte) layout {
	t.Helper()
	l := layout{blobs: map[string][]byte{}}
	tr := tar.NewReader(bytes.NewReader(data))
	files := map[string][]byte{}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("reading the tar: %v", err)
		}
		l.names = append(l.names, h.Name)
		if !h.ModTime.Equal(epoch) || h.Uid != 0 || h.Gid != 0 {
			t.Errorf("%s: mtime %v uid %d gid %d, want the fixed epoch and root", h.Name, h.ModTime, h.Uid, h.Gid)
		}
		if h.Typeflag == tar.TypeReg {
			b, _ := io.ReadAll(tr)
			files[h.Name] = b
		}
	}
	if got := string(files["oci-layout"]); got != `{"imageLayoutVersion":"1.0.0"}` {
		t.Errorf("oci-layout = %q", got)
	}
	if err := json.Unmarshal(files["index.json"], &l.index); err != nil {
		t.Fatalf("index.json: %v", err)
	}
	for name, b := range files {
		hexd, ok := strings.CutPrefix(name, "blobs/sha256/")
		if !ok {
			continue
		}
		sum := sha256.Sum256(b)
		if hex.EncodeToString(sum[:]) != hexd {
			t.Errorf("blob %s holds content with digest %x", name, sum)
		}
		l.blobs["sha256:"+hexd] = b
	}
	return l
}

// blob returns the blob d points to, checking its size and media type.
func (l layout) blob(t *testing.T, d Descriptor, mediaType string) []byte {
	t.Helper()
	b, ok := l.blobs[d.Digest]
	if !ok {
		t.Fatalf("descriptor %s points to a missing blob", d.Digest)
	}
	if int64(len(b)) != d.Size {
		t.Errorf("descriptor %s says %d bytes, the blob has %d", d.Digest, d.Size, len(b))
	}
	if d.MediaType != mediaType {
		t.Errorf("descriptor %s has media type %q, want %q", d.Digest, d.MediaType, mediaType)
	}
	return b
}

type layerFile struct {
	typ  byte
	mode int64
	link string
	data string
}

func layerFiles(t *testing.T, b []byte) ([]string, map[string]layerFile) {
	t.Helper()
	var order []string
	out := map[string]layerFile{}
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return order, out
		}
		if err != nil {
			t.Fatalf("reading the layer: %v", err)
		}
		data, _ := io.ReadAll(tr)
		order = append(order, h.Name)
		out[h.Name] = layerFile{typ: h.Typeflag, mode: h.Mode, link: h.Linkname, data: string(data)}
	}
}

func TestWriteLayout(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "agent")
	if err := os.WriteFile(src, []byte("#!/bin/sh\necho agent\n"), 0o750); err != nil {
		t.Fatal(err)
	}
	agent := Image{
		Name: "registry.local/weft:dev",
		Files: []File{
			{Path: "/usr/bin/weft-agent", Source: src},
			{Path: "/etc/weft/config.yaml", Data: []byte("a: 1\n"), Mode: 0o600},
			{Path: "/bin/sh", Symlink: "/usr/bin/weft-agent"},
			{Path: "/var/lib/weft", Mode: fs.ModeDir | 0o700},
		},
		Entrypoint: []string{"/usr/bin/weft-agent"},
		Cmd:        []string{"--config", "/etc/weft/config.yaml"},
		Env:        []string{"WEFT_LOG=debug"},
	}
	other := Image{Name: "localhost:5000/tools/x:v1.2", Files: []File{{Path: "/x", Data: []byte("x")}}, Env: []string{"PATH=/x"}}
	var buf bytes.Buffer
	if err := Write(&buf, agent, other); err != nil {
		t.Fatal(err)
	}
	l := readLayout(t, buf.Bytes())

	wantNames := []string{"blobs/", "blobs/sha256/"}
	if len(l.names) < 4 || l.names[0] != wantNames[0] || l.names[1] != wantNames[1] ||
		l.names[len(l.names)-2] != "index.json" || l.names[len(l.names)-1] != "oci-layout" {
		t.Errorf("tar entries %v: want blobs/, blobs/sha256/, the blobs, index.json, oci-layout", l.names)
	}
	if l.index.SchemaVersion != 2 || l.index.MediaType != MediaTypeIndex || len(l.index.Manifests) != 2 {
		t.Fatalf("index.json: %+v", l.index)
	}
	for i, want := range []struct{ name, tag string }{{agent.Name, "dev"}, {other.Name, "v1.2"}} {
		md := l.index.Manifests[i]
		if got := md.Annotations[AnnotationContainerdName]; got != want.name {
			t.Errorf("manifest %d: %s = %q, want %q", i, AnnotationContainerdName, got, want.name)
		}
		if got := md.Annotations[AnnotationRefName]; got != want.tag {
			t.Errorf("manifest %d: %s = %q, want %q", i, AnnotationRefName, got, want.tag)
		}
		if md.Platform == nil || md.Platform.OS != "linux" || md.Platform.Architecture != runtime.GOARCH {
			t.Errorf("manifest %d: platform %+v", i, md.Platform)
		}
		var man Manifest
		if err := json.Unmarshal(l.blob(t, md, MediaTypeManifest), &man); err != nil {
			t.Fatal(err)
		}
		if man.SchemaVersion != 2 || man.MediaType != MediaTypeManifest || len(man.Layers) != 1 {
			t.Fatalf("manifest %d: %+v", i, man)
		}
		var cfg Config
		if err := json.Unmarshal(l.blob(t, man.Config, MediaTypeConfig), &cfg); err != nil {
			t.Fatal(err)
		}
		layer := l.blob(t, man.Layers[0], MediaTypeLayer)
		if cfg.RootFS.Type != "layers" || len(cfg.RootFS.DiffIDs) != 1 || cfg.RootFS.DiffIDs[0] != man.Layers[0].Digest {
			t.Errorf("manifest %d: rootfs %+v does not name the uncompressed layer %s", i, cfg.RootFS, man.Layers[0].Digest)
		}
		if cfg.OS != "linux" || cfg.Architecture != runtime.GOARCH {
			t.Errorf("config %d: os %q arch %q", i, cfg.OS, cfg.Architecture)
		}
		if i == 1 {
			if strings.Join(cfg.Config.Env, " ") != "PATH=/x" {
				t.Errorf("config 1 env %v: an image's own PATH must be kept alone", cfg.Config.Env)
			}
			continue
		}
		if strings.Join(cfg.Config.Entrypoint, " ") != "/usr/bin/weft-agent" || strings.Join(cfg.Config.Cmd, " ") != "--config /etc/weft/config.yaml" {
			t.Errorf("config: entrypoint %v cmd %v", cfg.Config.Entrypoint, cfg.Config.Cmd)
		}
		if strings.Join(cfg.Config.Env, " ") != DefaultPath+" WEFT_LOG=debug" {
			t.Errorf("config env %v: want the default PATH, then WEFT_LOG", cfg.Config.Env)
		}
		order, files := layerFiles(t, layer)
		wantOrder := []string{"bin/", "bin/sh", "etc/", "etc/weft/", "etc/weft/config.yaml", "usr/", "usr/bin/", "usr/bin/weft-agent", "var/", "var/lib/", "var/lib/weft/"}
		if strings.Join(order, " ") != strings.Join(wantOrder, " ") {
			t.Errorf("layer entries %v, want %v (sorted, with parents)", order, wantOrder)
		}
		check := func(name string, want layerFile) {
			t.Helper()
			if got := files[name]; got != want {
				t.Errorf("layer %s = %+v, want %+v", name, got, want)
			}
		}
		check("usr/bin/weft-agent", layerFile{typ: tar.TypeReg, mode: 0o750, data: "#!/bin/sh\necho agent\n"})
		check("etc/weft/config.yaml", layerFile{typ: tar.TypeReg, mode: 0o600, data: "a: 1\n"})
		check("bin/sh", layerFile{typ: tar.TypeSymlink, mode: 0o777, link: "/usr/bin/weft-agent"})
		check("var/lib/weft/", layerFile{typ: tar.TypeDir, mode: 0o700})
		check("usr/bin/", layerFile{typ: tar.TypeDir, mode: 0o755})
	}

	// The same input gives the same bytes.
	var again bytes.Buffer
	if err := Write(&again, agent, other); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf.Bytes(), again.Bytes()) {
		t.Error("two writes of the same images differ")
	}
}

func TestSharedLayerStoredOnce(t *testing.T) {
	files := []File{{Path: "/a", Data: []byte("same")}}
	var buf bytes.Buffer
	if err := Write(&buf, Image{Name: "registry.local/a:1", Files: files}, Image{Name: "registry.local/b:1", Files: files}); err != nil {
		t.Fatal(err)
	}
	l := readLayout(t, buf.Bytes())
	layers := 0
	for _, n := range l.names {
		if strings.HasPrefix(n, "blobs/sha256/") && n != "blobs/sha256/" {
			layers++
		}
	}
	// The layer, the config and so the manifest are identical: three
	// blobs, two index entries naming the same manifest.
	if layers != 3 || len(l.index.Manifests) != 2 || l.index.Manifests[0].Digest != l.index.Manifests[1].Digest {
		t.Errorf("%d blobs and index %+v: want 3 blobs and two entries for one manifest", layers, l.index.Manifests)
	}
}

func TestWriteRefuses(t *testing.T) {
	ok := []File{{Path: "/a", Data: []byte("a")}}
	cases := []struct {
		what string
		imgs []Image
		want string
	}{
		{"no images", nil, "no images"},
		{"short name", []Image{{Name: "busybox", Files: ok}}, "not a full image reference"},
		{"no tag", []Image{{Name: "registry.local/busybox", Files: ok}}, "not a full image reference"},
		{"no registry", []Image{{Name: "library/busybox:1", Files: ok}}, "no registry host"},
		{"upper case", []Image{{Name: "registry.local/Weft:dev", Files: ok}}, "not a full image reference"},
		{"twice", []Image{{Name: "registry.local/a:1", Files: ok}, {Name: "registry.local/a:1", Files: ok}}, "given twice"},
		{"relative", []Image{{Name: "registry.local/a:1", Files: []File{{Path: "a", Data: []byte{}}}}}, "clean absolute path"},
		{"unclean", []Image{{Name: "registry.local/a:1", Files: []File{{Path: "/a/../b", Data: []byte{}}}}}, "clean absolute path"},
		{"root", []Image{{Name: "registry.local/a:1", Files: []File{{Path: "/", Mode: fs.ModeDir}}}}, "clean absolute path"},
		{"two kinds", []Image{{Name: "registry.local/a:1", Files: []File{{Path: "/a", Data: []byte{}, Symlink: "b"}}}}, "exactly one of"},
		{"no kind", []Image{{Name: "registry.local/a:1", Files: []File{{Path: "/a"}}}}, "exactly one of"},
		{"dir with data", []Image{{Name: "registry.local/a:1", Files: []File{{Path: "/a", Mode: fs.ModeDir, Data: []byte{}}}}}, "a directory has no"},
		{"device", []Image{{Name: "registry.local/a:1", Files: []File{{Path: "/a", Mode: fs.ModeDevice, Data: []byte{}}}}}, "only permission bits"},
		{"duplicate", []Image{{Name: "registry.local/a:1", Files: []File{{Path: "/a", Data: []byte{}}, {Path: "/a", Data: []byte{}}}}}, "already files[0]"},
		{"file parent", []Image{{Name: "registry.local/a:1", Files: []File{{Path: "/a", Data: []byte{}}, {Path: "/a/b", Data: []byte{}}}}}, "not a directory"},
		{"missing source", []Image{{Name: "registry.local/a:1", Files: []File{{Path: "/a", Source: "/nonexistent/x"}}}}, "reading /nonexistent/x"},
		{"bad env", []Image{{Name: "registry.local/a:1", Files: ok, Env: []string{"NOEQUALS"}}}, "not KEY=value"},
	}
	for _, c := range cases {
		err := Write(io.Discard, c.imgs...)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err = %v, want one saying %q", c.what, err, c.want)
		}
		if err != nil && c.what != "missing source" && !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: %v does not wrap ErrInvalid", c.what, err)
		}
	}
}

func TestBusyboxAndPause(t *testing.T) {
	if err := CheckStatic(BusyboxPath); err != nil {
		t.Skipf("no static busybox here: %v", err)
	}
	bb, err := Busybox()
	if err != nil {
		t.Fatal(err)
	}
	pause, err := Pause()
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := Write(&buf, bb, pause); err != nil {
		t.Fatal(err)
	}
	l := readLayout(t, buf.Bytes())
	want, _ := os.ReadFile(BusyboxPath)
	for i, md := range l.index.Manifests {
		var man Manifest
		_ = json.Unmarshal(l.blob(t, md, MediaTypeManifest), &man)
		_, files := layerFiles(t, l.blob(t, man.Layers[0], MediaTypeLayer))
		if files["bin/busybox"].data != string(want) || files["bin/busybox"].mode != 0o755 {
			t.Errorf("image %d: bin/busybox is not %s (mode %o)", i, BusyboxPath, files["bin/busybox"].mode)
		}
		if files["bin/sleep"].link != "busybox" {
			t.Errorf("image %d: bin/sleep is not a link to busybox: %+v", i, files["bin/sleep"])
		}
		if i == 0 {
			for _, a := range []string{"sh", "nc", "ip", "ping", "nsenter", "cat", "ls"} {
				if files["bin/"+a].link != "busybox" {
					t.Errorf("busybox image: bin/%s missing", a)
				}
			}
			if files["tmp/"].mode != 0o1777 {
				t.Errorf("busybox image: /tmp mode %o, want 1777", files["tmp/"].mode)
			}
		}
	}
}

func TestCheckStatic(t *testing.T) {
	dir := t.TempDir()
	script := filepath.Join(dir, "s")
	_ = os.WriteFile(script, []byte("#!/bin/sh\n"), 0o755)
	if err := CheckStatic(script); err != nil {
		t.Errorf("a script: %v", err)
	}
	empty := filepath.Join(dir, "e")
	_ = os.WriteFile(empty, nil, 0o644)
	if err := CheckStatic(empty); err != nil {
		t.Errorf("an empty file: %v", err)
	}
	// The test binary itself: static or not depending on cgo; /bin/ls
	// from a distribution is dynamic.
	if _, err := os.Stat("/bin/ls"); err == nil {
		if err := CheckStatic("/bin/ls"); !errors.Is(err, ErrDynamic) {
			t.Errorf("/bin/ls: %v, want ErrDynamic", err)
		}
	}
	if err := CheckStatic(filepath.Join(dir, "missing")); err == nil {
		t.Error("a missing file passed")
	}
}
