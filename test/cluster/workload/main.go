// Command workload is the test workload of the cluster tests. `workload drop NAME` runs the
// image's own executable (a lower-layer exec, which must not alert), then copies that executable
// into the container's writable layer as /tmp/NAME and runs the copy (the drop-and-execute
// pattern, which must alert), then sleeps. `workload hello` prints and exits.
package main

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: workload drop NAME | hello")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "hello":
		fmt.Println("hello from", os.Args[0])
	case "drop":
		if len(os.Args) != 3 {
			fmt.Fprintln(os.Stderr, "usage: workload drop NAME")
			os.Exit(2)
		}
		if err := drop(os.Args[2]); err != nil {
			fmt.Fprintln(os.Stderr, "workload:", err)
			os.Exit(1)
		}
		sigs := make(chan os.Signal, 1)
		signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
		<-sigs
	default:
		fmt.Fprintln(os.Stderr, "unknown command", os.Args[1])
		os.Exit(2)
	}
}

func drop(name string) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	// Ordinary executables of the image, several times: none of them is drift.
	for range 3 {
		if err := run(self, "hello"); err != nil {
			return err
		}
	}
	dropped := filepath.Join("/tmp", name)
	if err := copyFile(self, dropped); err != nil {
		return err
	}
	// Give the sensor a moment between the lower-layer and the upper-layer execs so their
	// alerts (or their absence) are easy to tell apart in the log.
	time.Sleep(time.Second)
	return run(dropped, "hello")
}

func run(path string, args ...string) error {
	out, err := exec.Command(path, args...).CombinedOutput()
	fmt.Printf("ran %s: %s", path, out)
	return err
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
