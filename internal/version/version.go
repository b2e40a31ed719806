// Package version holds the build version of driverpilot, set by the linker.
package version

// Version is the release of this build; `make build VERSION=x.y.z` sets it.
var Version = "0.0.0-dev"
