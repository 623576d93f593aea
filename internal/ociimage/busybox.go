package ociimage

import (
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
)

// Image names of the helpers. The pause image is the name the lab nodes'
// containerd is configured with as its sandbox image.
const (
	BusyboxName = "registry.local/busybox:1"
	PauseName   = "registry.local/pause:1"
)

// BusyboxPath is where Debian's busybox-static installs its binary.
var BusyboxPath = "/bin/busybox"

// busyboxApplets are linked to /bin/busybox in the image. A fixed list
// (not `busybox --list`) keeps the image the same on every machine that
// has the same busybox. wget is left out: busybox-static's segfaults
// (static glibc resolver); use nc for HTTP checks.
var busyboxApplets = []string{
	"[", "ash", "awk", "basename", "cat", "chmod", "cp", "cut", "date", "dd", "df",
	"dirname", "echo", "env", "false", "find", "free", "grep", "head", "hostname",
	"id", "ifconfig", "ip", "kill", "ln", "ls", "mkdir", "mount", "mv", "nc",
	"nslookup", "nsenter", "ping", "printf", "ps", "pwd", "readlink", "rm",
	"route", "sed", "seq", "sh", "sleep", "sort", "stat", "tail", "tee", "test",
	"timeout", "top", "touch", "tr", "true", "umount", "uname", "uniq", "wc",
	"xargs",
}

// BusyboxFiles are the files of a busybox userland: /bin/busybox (from
// BusyboxPath), its applets as symlinks in /bin, and the directories a
// runtime mounts over. Add them to an image that needs a shell.
func BusyboxFiles() []File {
	files := []File{{Path: "/bin/busybox", Source: BusyboxPath, Mode: 0o755}}
	for _, a := range busyboxApplets {
		files = append(files, File{Path: "/bin/" + a, Symlink: "busybox"})
	}
	for _, d := range []string{"/dev", "/etc", "/proc", "/sys", "/tmp", "/var/run"} {
		mode := fs.ModeDir | 0o755
		if d == "/tmp" {
			mode = fs.ModeDir | fs.ModeSticky | 0o777
		}
		files = append(files, File{Path: d, Mode: mode})
	}
	return files
}

// Busybox is an image (BusyboxName) with BusyboxFiles whose default
// command is sh. It fails when BusyboxPath is missing or not statically
// linked: the image has no libc.
func Busybox() (Image, error) {
	if err := busyboxReady(); err != nil {
		return Image{}, err
	}
	return Image{Name: BusyboxName, Files: BusyboxFiles(), Cmd: []string{"/bin/sh"}}, nil
}

// Pause is the pod sandbox image (PauseName): busybox's sleep, which as a
// container's PID 1 just holds the pod's namespaces. The runtime stops a
// sandbox with SIGKILL, so sleep ignoring SIGTERM does not slow teardown.
func Pause() (Image, error) {
	if err := busyboxReady(); err != nil {
		return Image{}, err
	}
	return Image{
		Name: PauseName,
		Files: []File{
			{Path: "/bin/busybox", Source: BusyboxPath, Mode: 0o755},
			{Path: "/bin/sleep", Symlink: "busybox"},
		},
		Entrypoint: []string{"/bin/sleep", "infinity"},
	}, nil
}

func busyboxReady() error {
	if _, err := os.Stat(BusyboxPath); err != nil {
		return fmt.Errorf("ociimage: busybox image: %w (install Debian's busybox-static, or scripts/install-deps.sh)", err)
	}
	if err := CheckStatic(BusyboxPath); err != nil {
		return fmt.Errorf("ociimage: busybox image: %w (install busybox-static, not busybox)", err)
	}
	return nil
}

// ErrDynamic is returned by CheckStatic for a dynamically linked program.
var ErrDynamic = errors.New("dynamically linked")

// CheckStatic fails when path is an ELF program that needs a dynamic
// loader: in an image without a libc it would not start ("no such file or
// directory" from the runtime, which names no file). Files that are not
// ELF (scripts, data) pass.
func CheckStatic(path string) error {
	f, err := elf.Open(path)
	if err != nil {
		var fe *elf.FormatError
		if errors.As(err, &fe) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil // not an ELF file
		}
		return fmt.Errorf("checking %s: %w", path, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			interp := make([]byte, p.Filesz)
			_, _ = p.ReadAt(interp, 0)
			return fmt.Errorf("%s is %w (it needs %s): build it static, e.g. CGO_ENABLED=0 go build", path, ErrDynamic, trimNUL(interp))
		}
	}
	return nil
}

func trimNUL(b []byte) string {
	for i, c := range b {
		if c == 0 {
			return string(b[:i])
		}
	}
	return string(b)
}
