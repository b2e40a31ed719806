// Command pause is the local cluster's sandbox ("pause") container: it holds a pod's namespaces,
// reaps orphaned children and exits on SIGTERM or SIGINT. No registry is reachable from the
// machines this cluster runs on, so the project builds its own.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
	for sig := range sigs {
		if sig != syscall.SIGCHLD {
			return
		}
		for { // reap every exited child; a shared-PID pod makes us their parent
			pid, err := syscall.Wait4(-1, nil, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
