package matrix

// GuestInfo is what the guest's /init learned before the self-tests ran (the "info" section).
type GuestInfo struct {
	// KernelRelease is uname -r inside the guest.
	KernelRelease string `json:"kernelRelease"`
	// KernelVersion is uname -v inside the guest.
	KernelVersion string `json:"kernelVersion,omitempty"`
	// UptimeAtInit is the kernel's uptime in seconds when /init started: the boot time.
	UptimeAtInit float64 `json:"uptimeAtInit"`
	// Modules are the kernel modules /init loaded, in order.
	Modules []ModuleLoad `json:"modules,omitempty"`
	// VmlinuxBTF tells whether /sys/kernel/btf/vmlinux exists.
	VmlinuxBTF bool `json:"vmlinuxBTF"`
	// OverlayModuleBTF tells whether /sys/kernel/btf/overlay exists (overlay loaded as a module with BTF).
	OverlayModuleBTF bool `json:"overlayModuleBTF"`
	// Lockdown is the content of /sys/kernel/security/lockdown, or why it could not be read.
	Lockdown string `json:"lockdown,omitempty"`
	// Host is true when the matrix ran on this machine's own kernel, not in a guest.
	Host bool `json:"host,omitempty"`
	// Architecture is the machine (GOARCH spelling) the matrix ran on.
	Architecture string `json:"architecture,omitempty"`
	// Problems are setup steps that failed (a mount, a module); any problem fails the kernel.
	Problems []string `json:"problems,omitempty"`
}

// ModuleLoad is one finit_module call.
type ModuleLoad struct {
	// Name is the module name, for example "overlay".
	Name string `json:"name"`
	// Error is empty when the module loaded (or was already loaded).
	Error string `json:"error,omitempty"`
}

// Summary is the guest's last word (the "done" section).
type Summary struct {
	// Runs are the self-test runs, in order.
	Runs []Run `json:"runs"`
	// UptimeAtEnd is the kernel's uptime in seconds just before power-off.
	UptimeAtEnd float64 `json:"uptimeAtEnd"`
}

// Run is one `driverpilot selftest` process.
type Run struct {
	// Driver is the --driver it ran with.
	Driver string `json:"driver"`
	// Fault is the sensor fault injected into the run (agent/selftest.Fault), "" for none.
	Fault string `json:"fault,omitempty"`
	// RC is its exit code (-1 when it did not start or was killed at the timeout).
	RC int `json:"rc"`
	// Seconds is how long it ran.
	Seconds float64 `json:"seconds"`
	// Error is why it did not start or was killed.
	Error string `json:"error,omitempty"`
}
