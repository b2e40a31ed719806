// Package selftest proves, on the node, that a sensor sees what it must see (DESIGN §7): it
// executes controlled binaries from an overlayfs upper layer, a lower layer, after a copy-up
// and from a memfd, and checks that the sensor reports each with the right flags.
//
// The self-test runs against any sensor.Sensor, so a fault-injecting sensor can prove that it
// fails. Events are matched by a unique executable name per run, never by pid. It fails closed:
// a missing event within the timeout fails the check and names it. A check that cannot be
// staged is NotApplicable, which never counts as Passed. A check that saw no event while the
// sensor lost events (sensor.DropCounter) is Inconclusive, and so is the run unless another check
// failed: only a run without drops can fail a driver. While it runs the self-test asks the sensor
// for lower-layer events (sensor.LowerLayerRequester), which it otherwise filters in the kernel.
//
// The binaries run on a private overlay mount (lower, upper, work and merged directories in a
// temporary directory), built the way container runtimes build a container's root filesystem,
// so the test behaves the same on a host, in a pod and in an initramfs. It is built even where
// the agent's own root is overlayfs: an image's lower files cannot be named uniquely per run,
// and a copy-up of an image binary would change the agent's container. Layers go in the work
// directory; where that is ramfs (an initramfs) or overlayfs (which cannot be an upper layer) a
// private tmpfs is mounted first. Mounts and files are removed when the test ends, also on
// failure or cancellation (unmount, then MNT_DETACH as a last resort).
//
// The executable is a 129-byte static ELF (amd64 or arm64) that calls exit(0). The memfd check
// executes /proc/self/fd/N, so it needs /proc mounted; without it that check is NotApplicable.
package selftest
