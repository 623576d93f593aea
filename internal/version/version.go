// Package version holds the build's version, commit and date, set by the
// linker (`make build` passes -ldflags "-X
// github.com/weftmesh/weft/internal/version.Version=..." and the same for
// Commit and BuildDate). A plain `go build` leaves Version "dev" and takes
// the commit and its time from the Go toolchain's VCS stamp when there is
// one.
package version

import (
	"runtime"
	"runtime/debug"
)

// Set by the linker.
var (
	// Version is the release version of this build; "dev" for local builds.
	Version = "dev"
	// Commit is the git commit the build was made from.
	Commit = ""
	// BuildDate is when the binary was built (RFC 3339, UTC).
	BuildDate = ""
)

// Info describes one binary: what `meshctl version` prints for meshctl and
// for the agent (GET /v1/version). Field names are the JSON of
// `meshctl version -o json`.
type Info struct {
	Version   string `json:"version"`
	Commit    string `json:"commit"`
	BuildDate string `json:"buildDate"`
	GoVersion string `json:"goVersion"`
	// Platform is GOOS/GOARCH.
	Platform string `json:"platform"`
	// Modified is set when the build's source tree had uncommitted changes
	// (known only from the toolchain's VCS stamp).
	Modified bool `json:"modified,omitempty"`
}

// Get returns this binary's Info.
func Get() Info {
	in := Info{Version: Version, Commit: Commit, BuildDate: BuildDate, GoVersion: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH}
	if bi, ok := debug.ReadBuildInfo(); ok {
		fromBuildInfo(&in, bi.Settings)
	}
	if in.Commit == "" {
		in.Commit = "unknown"
	}
	if in.BuildDate == "" {
		in.BuildDate = "unknown"
	}
	return in
}

// fromBuildInfo fills what the linker did not set from the toolchain's
// VCS stamp (`go build` in a git checkout records the commit and its time).
func fromBuildInfo(in *Info, settings []debug.BuildSetting) {
	for _, s := range settings {
		switch s.Key {
		case "vcs.revision":
			if in.Commit == "" {
				in.Commit = s.Value
			}
		case "vcs.time":
			if in.BuildDate == "" {
				// The commit's time, not the build's: say so.
				in.BuildDate = s.Value + " (commit time)"
			}
		case "vcs.modified":
			in.Modified = s.Value == "true"
		}
	}
	if len(in.Commit) > 12 {
		in.Commit = in.Commit[:12]
	}
}
