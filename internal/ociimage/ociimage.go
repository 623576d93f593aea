// Package ociimage writes container images as an OCI image layout tar, the
// form `ctr -n k8s.io images import` reads, so lab nodes get their images
// (the pause sandbox, busybox, the Weft agent) without a registry. Each
// image is one uncompressed layer; the same input gives the same bytes
// (fixed times and owners, sorted entries), so an image built twice has the
// same digest and a rebuild that changed nothing changes nothing.
package ociimage

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strings"
	"time"
)

// Media types and annotations of the layout (OCI image spec v1.0, and the
// annotation containerd reads to name an imported image).
const (
	MediaTypeIndex    = "application/vnd.oci.image.index.v1+json"
	MediaTypeManifest = "application/vnd.oci.image.manifest.v1+json"
	MediaTypeConfig   = "application/vnd.oci.image.config.v1+json"
	MediaTypeLayer    = "application/vnd.oci.image.layer.v1.tar"

	AnnotationContainerdName = "io.containerd.image.name"
	AnnotationRefName        = "org.opencontainers.image.ref.name"
)

// DefaultPath is the PATH an image gets when its Env sets none: a runtime
// adds no PATH of its own for an image that has one in its config.
const DefaultPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// epoch is every entry's time: a fixed time keeps the bytes reproducible.
var epoch = time.Unix(0, 0).UTC()

// ErrInvalid is wrapped by every validation error of an Image.
var ErrInvalid = errors.New("ociimage: invalid image")

// File is one entry of an image's layer. Exactly one of Data, Source and
// Symlink says what it is, or Mode has fs.ModeDir for a directory (then all
// three are empty). Parent directories that are not listed are added
// (0755).
type File struct {
	Path    string      // absolute path inside the image, e.g. /usr/bin/weft-agent
	Mode    fs.FileMode // permission bits (and fs.ModeDir); 0 means 0644, a Source's own bits, or 0755 for a directory
	Data    []byte      // the contents
	Source  string      // a file on this machine whose contents to take
	Symlink string      // the target of a symbolic link
}

// Image is one image of the tar.
type Image struct {
	// Name is the full reference with a registry host and a tag, e.g.
	// registry.local/weft:dev: the CRI looks images up by their full
	// name, so a short name would never match a pod's image.
	Name       string
	Files      []File
	Entrypoint []string
	Cmd        []string
	Env        []string // KEY=value; without a PATH entry DefaultPath is added
	WorkingDir string
	// Architecture is the GOARCH of the binaries in the image; empty means
	// the machine's own (runtime.GOARCH).
	Architecture string
}

// nameRE is a reference with a registry host (a dot, a port or
// "localhost" in the first component), a repository path and a tag.
var nameRE = regexp.MustCompile(`^((?:[a-z0-9]+(?:[.-][a-z0-9]+)*\.[a-z0-9]+(?:[.-][a-z0-9]+)*|localhost|[a-z0-9]+(?:[.-][a-z0-9]+)*)(?::[0-9]{1,5})?)((?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)+):([A-Za-z0-9_][A-Za-z0-9_.-]{0,127})$`)

// splitName checks name and returns its tag.
func splitName(name string) (tag string, err error) {
	m := nameRE.FindStringSubmatch(name)
	if m == nil {
		return "", fmt.Errorf("%w: name %q is not a full image reference: use registry/repository:tag in lower case, e.g. registry.local/weft:dev", ErrInvalid, name)
	}
	host := m[1]
	if !strings.ContainsAny(host, ".:") && host != "localhost" {
		return "", fmt.Errorf("%w: name %q has no registry host (%q would be read as a repository on docker.io): name the registry, e.g. registry.local/%s", ErrInvalid, name, host, name)
	}
	return m[3], nil
}

// entry is a validated file of a layer, path without the leading slash.
type entry struct {
	name string
	File
}

func (img *Image) entries() ([]entry, error) {
	seen := map[string]int{}
	var out []entry
	for i, f := range img.Files {
		where := fmt.Sprintf("image %s: files[%d] (%s)", img.Name, i, f.Path)
		if !path.IsAbs(f.Path) || path.Clean(f.Path) != f.Path || f.Path == "/" {
			return nil, fmt.Errorf("%w: %s: the path must be a clean absolute path below /", ErrInvalid, where)
		}
		kinds := 0
		if f.Data != nil {
			kinds++
		}
		if f.Source != "" {
			kinds++
		}
		if f.Symlink != "" {
			kinds++
		}
		switch {
		case f.Mode.IsDir() && kinds != 0:
			return nil, fmt.Errorf("%w: %s: a directory has no Data, Source or Symlink", ErrInvalid, where)
		case !f.Mode.IsDir() && kinds != 1:
			return nil, fmt.Errorf("%w: %s: give exactly one of Data, Source and Symlink (or fs.ModeDir in Mode for a directory)", ErrInvalid, where)
		case f.Mode&^(fs.ModeDir|fs.ModePerm|fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky) != 0:
			return nil, fmt.Errorf("%w: %s: mode %v: only permission bits, setuid/setgid/sticky and fs.ModeDir are supported", ErrInvalid, where, f.Mode)
		}
		name := strings.TrimPrefix(f.Path, "/")
		if j, dup := seen[name]; dup {
			return nil, fmt.Errorf("%w: %s: the path is already files[%d]", ErrInvalid, where, j)
		}
		seen[name] = i
		out = append(out, entry{name: name, File: f})
	}
	// Parents: listed ones must be directories, missing ones are added.
	for _, e := range append([]entry(nil), out...) {
		for dir := path.Dir(e.name); dir != "."; dir = path.Dir(dir) {
			if j, ok := seen[dir]; ok {
				if j >= 0 && !img.Files[j].Mode.IsDir() {
					return nil, fmt.Errorf("%w: image %s: %s is inside /%s, which is not a directory (files[%d])", ErrInvalid, img.Name, e.Path, dir, j)
				}
				continue
			}
			seen[dir] = -1
			out = append(out, entry{name: dir, File: File{Path: "/" + dir, Mode: fs.ModeDir | 0o755}})
		}
	}
	sort.Slice(out, func(a, b int) bool { return out[a].name < out[b].name })
	return out, nil
}

// layer returns the uncompressed layer tar of img.
func (img *Image) layer() ([]byte, error) {
	entries, err := img.entries()
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		hdr := &tar.Header{Name: e.name, ModTime: epoch, Format: tar.FormatPAX}
		perm := e.Mode & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky)
		var data []byte
		switch {
		case e.Mode.IsDir():
			hdr.Typeflag, hdr.Name = tar.TypeDir, e.name+"/"
			if perm == 0 {
				perm = 0o755
			}
		case e.Symlink != "":
			hdr.Typeflag, hdr.Linkname = tar.TypeSymlink, e.Symlink
			perm = 0o777
		case e.Source != "":
			data, err = os.ReadFile(e.Source)
			if err != nil {
				return nil, fmt.Errorf("image %s: reading %s for %s: %w", img.Name, e.Source, e.Path, err)
			}
			if perm == 0 {
				st, err := os.Stat(e.Source)
				if err != nil {
					return nil, fmt.Errorf("image %s: %w", img.Name, err)
				}
				perm = st.Mode().Perm()
			}
			hdr.Typeflag, hdr.Size = tar.TypeReg, int64(len(data))
		default:
			data = e.Data
			if perm == 0 {
				perm = 0o644
			}
			hdr.Typeflag, hdr.Size = tar.TypeReg, int64(len(data))
		}
		hdr.Mode = tarMode(perm)
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, fmt.Errorf("image %s: writing %s: %w", img.Name, e.Path, err)
		}
		if _, err := tw.Write(data); err != nil {
			return nil, fmt.Errorf("image %s: writing %s: %w", img.Name, e.Path, err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// tarMode converts permission and special bits to the tar header's mode.
func tarMode(m fs.FileMode) int64 {
	mode := int64(m.Perm())
	if m&fs.ModeSetuid != 0 {
		mode |= 0o4000
	}
	if m&fs.ModeSetgid != 0 {
		mode |= 0o2000
	}
	if m&fs.ModeSticky != 0 {
		mode |= 0o1000
	}
	return mode
}

// Descriptor is an OCI content descriptor.
type Descriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int64             `json:"size"`
	Platform    *Platform         `json:"platform,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

// Platform is the platform of a manifest in an index.
type Platform struct {
	Architecture string `json:"architecture"`
	OS           string `json:"os"`
}

// Index is index.json of the layout.
type Index struct {
	SchemaVersion int          `json:"schemaVersion"`
	MediaType     string       `json:"mediaType"`
	Manifests     []Descriptor `json:"manifests"`
}

// Manifest is an image manifest.
type Manifest struct {
	SchemaVersion int          `json:"schemaVersion"`
	MediaType     string       `json:"mediaType"`
	Config        Descriptor   `json:"config"`
	Layers        []Descriptor `json:"layers"`
}

// Config is an image configuration (the fields this package writes).
type Config struct {
	Architecture string          `json:"architecture"`
	OS           string          `json:"os"`
	Config       ContainerConfig `json:"config"`
	RootFS       RootFS          `json:"rootfs"`
}

// ContainerConfig is the runtime part of an image configuration.
type ContainerConfig struct {
	Env        []string `json:"Env,omitempty"`
	Entrypoint []string `json:"Entrypoint,omitempty"`
	Cmd        []string `json:"Cmd,omitempty"`
	WorkingDir string   `json:"WorkingDir,omitempty"`
}

// RootFS lists the layers' uncompressed digests.
type RootFS struct {
	Type    string   `json:"type"`
	DiffIDs []string `json:"diff_ids"`
}

func digest(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// Write writes the images as one OCI image layout tar to w. Image names
// must be unique; shared content (the same layer in two images) is stored
// once.
func Write(w io.Writer, images ...Image) error {
	if len(images) == 0 {
		return fmt.Errorf("%w: no images to write", ErrInvalid)
	}
	blobs := map[string][]byte{}
	put := func(b []byte) Descriptor {
		d := digest(b)
		blobs[d] = b
		return Descriptor{Digest: d, Size: int64(len(b))}
	}
	index := Index{SchemaVersion: 2, MediaType: MediaTypeIndex}
	names := map[string]bool{}
	for i := range images {
		img := &images[i]
		tag, err := splitName(img.Name)
		if err != nil {
			return err
		}
		if names[img.Name] {
			return fmt.Errorf("%w: image %s is given twice", ErrInvalid, img.Name)
		}
		names[img.Name] = true
		for _, kv := range img.Env {
			if k, _, ok := strings.Cut(kv, "="); !ok || k == "" {
				return fmt.Errorf("%w: image %s: env %q is not KEY=value", ErrInvalid, img.Name, kv)
			}
		}
		arch := img.Architecture
		if arch == "" {
			arch = runtime.GOARCH
		}
		layer, err := img.layer()
		if err != nil {
			return err
		}
		ld := put(layer)
		ld.MediaType = MediaTypeLayer
		env := append([]string(nil), img.Env...)
		hasPath := false
		for _, kv := range env {
			hasPath = hasPath || strings.HasPrefix(kv, "PATH=")
		}
		if !hasPath {
			env = append([]string{DefaultPath}, env...)
		}
		cfg, err := json.Marshal(Config{
			Architecture: arch, OS: "linux",
			Config: ContainerConfig{Env: env, Entrypoint: img.Entrypoint, Cmd: img.Cmd, WorkingDir: img.WorkingDir},
			RootFS: RootFS{Type: "layers", DiffIDs: []string{ld.Digest}},
		})
		if err != nil {
			return err
		}
		cd := put(cfg)
		cd.MediaType = MediaTypeConfig
		man, err := json.Marshal(Manifest{SchemaVersion: 2, MediaType: MediaTypeManifest, Config: cd, Layers: []Descriptor{ld}})
		if err != nil {
			return err
		}
		md := put(man)
		md.MediaType = MediaTypeManifest
		md.Platform = &Platform{Architecture: arch, OS: "linux"}
		md.Annotations = map[string]string{AnnotationContainerdName: img.Name, AnnotationRefName: tag}
		index.Manifests = append(index.Manifests, md)
	}
	idx, err := json.Marshal(index)
	if err != nil {
		return err
	}
	files := map[string][]byte{
		"oci-layout": []byte(`{"imageLayoutVersion":"1.0.0"}`),
		"index.json": idx,
	}
	for d, b := range blobs {
		files["blobs/sha256/"+strings.TrimPrefix(d, "sha256:")] = b
	}
	paths := make([]string, 0, len(files))
	for n := range files {
		paths = append(paths, n)
	}
	sort.Strings(paths)
	tw := tar.NewWriter(w)
	for _, dir := range []string{"blobs/", "blobs/sha256/"} {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: dir, Mode: 0o755, ModTime: epoch, Format: tar.FormatPAX}); err != nil {
			return fmt.Errorf("writing the image tar: %w", err)
		}
	}
	for _, n := range paths {
		b := files[n]
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: n, Mode: 0o644, Size: int64(len(b)), ModTime: epoch, Format: tar.FormatPAX}); err != nil {
			return fmt.Errorf("writing the image tar: %w", err)
		}
		if _, err := tw.Write(b); err != nil {
			return fmt.Errorf("writing the image tar: %w", err)
		}
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("writing the image tar: %w", err)
	}
	return nil
}

// WriteFile writes the images to a file, atomically: a reader never sees
// half a tar, and a failed write leaves no file.
func WriteFile(name string, images ...Image) error {
	tmp, err := os.CreateTemp(filepath.Dir(name), "."+filepath.Base(name)+".*")
	if err != nil {
		return fmt.Errorf("writing %s: %w", name, err)
	}
	defer os.Remove(tmp.Name())
	if err := Write(tmp, images...); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("writing %s: %w", name, err)
	}
	if err := os.Rename(tmp.Name(), name); err != nil {
		return fmt.Errorf("writing %s: %w", name, err)
	}
	return nil
}
