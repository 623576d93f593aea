// Package version holds the build's version, set by the linker
// (-ldflags "-X github.com/weftmesh/weft/internal/version.Version=...").
package version

// Version is the release version of this build; "dev" for local builds.
var Version = "dev"
