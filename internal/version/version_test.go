package version

import (
	"runtime/debug"
	"testing"
)

func TestLinkerValuesWinOverTheVCSStamp(t *testing.T) {
	stamp := []debug.BuildSetting{{Key: "vcs.revision", Value: "0123456789abcdef0123"}, {Key: "vcs.time", Value: "2026-01-02T03:04:05Z"}, {Key: "vcs.modified", Value: "true"}}
	in := Info{Commit: "abc123", BuildDate: "2026-02-03T00:00:00Z"}
	fromBuildInfo(&in, stamp)
	if in.Commit != "abc123" || in.BuildDate != "2026-02-03T00:00:00Z" || !in.Modified {
		t.Fatalf("linker-set values: %+v", in)
	}
	in = Info{}
	fromBuildInfo(&in, stamp)
	if in.Commit != "0123456789ab" || in.BuildDate != "2026-01-02T03:04:05Z (commit time)" {
		t.Fatalf("from the VCS stamp: %+v", in)
	}
}

func TestGetAlwaysSaysSomething(t *testing.T) {
	in := Get()
	if in.Version == "" || in.Commit == "" || in.BuildDate == "" || in.GoVersion == "" || in.Platform == "" {
		t.Fatalf("Get() has an empty field: %+v", in)
	}
}
