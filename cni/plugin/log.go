package plugin

import (
	"io"
	"log/slog"
	"os"
	"path/filepath"
)

// maxLogSize is the size at which the log file is moved to <file>.1 and a
// new one begun, so a node that runs pods for months does not fill its
// disk with the plugin's log.
const maxLogSize = 10 << 20

// openLog returns the command's logger and what closes it. With a log
// file, everything from Info up goes there (JSON, one line a record);
// without one, warnings and errors go to stderr, which the runtime puts in
// its own log. Never stdout: that is the result.
func openLog(path string, stderr io.Writer) (*slog.Logger, func()) {
	if stderr == nil {
		stderr = io.Discard
	}
	warnOnly := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	if path == "" {
		return warnOnly, func() {}
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		warnOnly.Warn("cannot create the log file's directory: logging to stderr", "logFile", path, "err", err)
		return warnOnly, func() {}
	}
	if fi, err := os.Stat(path); err == nil && fi.Size() > maxLogSize {
		_ = os.Rename(path, path+".1")
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		warnOnly.Warn("cannot open the log file: logging to stderr", "logFile", path, "err", err)
		return warnOnly, func() {}
	}
	return slog.New(slog.NewJSONHandler(f, &slog.HandlerOptions{Level: slog.LevelInfo})).With("plugin", Type, "pid", os.Getpid()), func() { f.Close() }
}
