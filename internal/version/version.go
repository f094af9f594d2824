// Package version reports the nodeforge version, set at link time with
// -ldflags "-X github.com/nodeforge/nodeforge/internal/version.Version=v…".
package version

import "runtime/debug"

// Version is the release version; "dev" for local builds.
var Version = "dev"

// String returns the version and, when known, the VCS revision.
func String() string {
	if info, ok := debug.ReadBuildInfo(); ok {
		for _, s := range info.Settings {
			if s.Key == "vcs.revision" && len(s.Value) >= 12 {
				return Version + "+" + s.Value[:12]
			}
		}
	}
	return Version
}
