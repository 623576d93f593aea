// Command oci-image writes an OCI image layout tar from static binaries and
// files, for `ctr -n k8s.io images import` on a lab node:
//
//	oci-image -o bin/weft-agent-image.tar --name registry.local/weft:dev \
//	    --file bin/weft-agent:/usr/bin/weft-agent --entrypoint /usr/bin/weft-agent
//
// --file SRC:DST[:MODE] adds the file SRC at DST (MODE in octal, default
// SRC's own); --entrypoint, --cmd and --env may be repeated, each
// occurrence one element; --busybox adds a busybox shell and applets
// (/bin/sh, nc, ip, ...). A dynamically linked ELF file is refused: the
// image has no libc.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strconv"
	"strings"

	"github.com/weftmesh/weft/internal/ociimage"
)

func main() {
	if err := run(os.Args[1:], os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "oci-image:", err)
		os.Exit(1)
	}
}

type list []string

func (l *list) String() string     { return strings.Join(*l, " ") }
func (l *list) Set(v string) error { *l = append(*l, v); return nil }

func run(args []string, stderr io.Writer) error {
	fl := flag.NewFlagSet("oci-image", flag.ContinueOnError)
	fl.SetOutput(stderr)
	var (
		out, name, workdir   string
		files, ep, cmd, envs list
		busybox              bool
	)
	fl.StringVar(&out, "o", "", "output `file` (the image tar)")
	fl.StringVar(&name, "name", "", "image `name` with registry and tag, e.g. registry.local/weft:dev")
	fl.Var(&files, "file", "add a file: `SRC:DST[:MODE]` (repeatable)")
	fl.Var(&ep, "entrypoint", "one `element` of the entrypoint (repeatable)")
	fl.Var(&cmd, "cmd", "one `element` of the default command (repeatable)")
	fl.Var(&envs, "env", "an environment variable `KEY=value` (repeatable)")
	fl.StringVar(&workdir, "workdir", "", "working `directory` of the container")
	fl.BoolVar(&busybox, "busybox", false, "add a busybox shell and applets (needs busybox-static)")
	fl.Usage = func() {
		fmt.Fprintln(stderr, "usage: oci-image -o OUT.tar --name REGISTRY/REPO:TAG [--file SRC:DST[:MODE]]... [--entrypoint ARG]... [--cmd ARG]... [--env K=V]... [--busybox]")
		fl.PrintDefaults()
	}
	if err := fl.Parse(args); err != nil {
		return err
	}
	if fl.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q: every input is a flag (see -h)", fl.Arg(0))
	}
	if out == "" || name == "" {
		return errors.New("-o and --name are required (see -h)")
	}
	img := ociimage.Image{Name: name, Entrypoint: ep, Cmd: cmd, Env: envs, WorkingDir: workdir}
	if busybox {
		if _, err := ociimage.Busybox(); err != nil {
			return err
		}
		img.Files = append(img.Files, ociimage.BusyboxFiles()...)
	}
	for _, spec := range files {
		f, err := parseFile(spec)
		if err != nil {
			return err
		}
		img.Files = append(img.Files, f)
	}
	if len(img.Files) == 0 {
		return errors.New("the image would be empty: add --file SRC:DST or --busybox")
	}
	return ociimage.WriteFile(out, img)
}

// parseFile reads SRC:DST[:MODE] and checks SRC.
func parseFile(spec string) (ociimage.File, error) {
	parts := strings.Split(spec, ":")
	if len(parts) < 2 || len(parts) > 3 || parts[0] == "" || parts[1] == "" {
		return ociimage.File{}, fmt.Errorf("--file %q: want SRC:DST or SRC:DST:MODE, e.g. bin/weft-agent:/usr/bin/weft-agent", spec)
	}
	f := ociimage.File{Source: parts[0], Path: parts[1]}
	if len(parts) == 3 {
		m, err := strconv.ParseUint(parts[2], 8, 32)
		if err != nil || m > 0o777 {
			return f, fmt.Errorf("--file %q: mode %q is not an octal permission like 0755", spec, parts[2])
		}
		f.Mode = fs.FileMode(m)
	}
	st, err := os.Stat(f.Source)
	if err != nil {
		return f, fmt.Errorf("--file %q: %w", spec, err)
	}
	if !st.Mode().IsRegular() {
		return f, fmt.Errorf("--file %q: %s is not a regular file", spec, f.Source)
	}
	if err := ociimage.CheckStatic(f.Source); err != nil {
		return f, fmt.Errorf("--file %q: %w", spec, err)
	}
	return f, nil
}
