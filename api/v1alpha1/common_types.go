package v1alpha1

// Driver is a syscall-capture driver, spelled as Falco's engine.kind spells it.
// +kubebuilder:validation:Enum=modern_ebpf;ebpf;kmod
type Driver string

const (
	// DriverModernEBPF is the CO-RE eBPF driver: BTF, tp_btf programs and a ring buffer.
	DriverModernEBPF Driver = "modern_ebpf"
	// DriverEBPF is the legacy eBPF probe: raw tracepoints and a perf event array.
	// Falco deprecated it in 0.43 and removed it in 0.44.
	DriverEBPF Driver = "ebpf"
	// DriverKmod is the kernel module.
	DriverKmod Driver = "kmod"
)

// AllDrivers lists every driver, in DriverPilot's default order of preference.
var AllDrivers = []Driver{DriverModernEBPF, DriverEBPF, DriverKmod}

// CheckName names one self-test check.
// +kubebuilder:validation:Enum=ExeUpperLayer;ExeLowerLayer;ExeCopyUp;ExeFromMemfd
type CheckName string

const (
	// CheckExeUpperLayer executes a binary copied onto the container's writable layer and expects
	// the sensor to report it as upper layer (the drop-and-execute pattern, falco#3286).
	CheckExeUpperLayer CheckName = "ExeUpperLayer"
	// CheckExeLowerLayer executes a binary of the image and expects lower layer, not upper.
	CheckExeLowerLayer CheckName = "ExeLowerLayer"
	// CheckExeCopyUp modifies an image binary in place (a copy-up) and expects upper layer.
	CheckExeCopyUp CheckName = "ExeCopyUp"
	// CheckExeFromMemfd executes from a memfd and expects from-memfd, neither layer.
	CheckExeFromMemfd CheckName = "ExeFromMemfd"
)

// AllChecks lists every self-test check.
var AllChecks = []CheckName{CheckExeUpperLayer, CheckExeLowerLayer, CheckExeCopyUp, CheckExeFromMemfd}

// Well-known names shared by the manager and the agent.
const (
	// NodeConditionRuntimeSecurityReady is the node condition that says whether runtime security
	// was verified on the node; its message names the driver.
	NodeConditionRuntimeSecurityReady = "RuntimeSecurityReady"
	// UnverifiedTaintKey is the optional NoSchedule taint kept on a node while it is not verified.
	UnverifiedTaintKey = "security.driverpilot.io/unverified"
	// ReasonSensorUnavailable is the self-test reason of an agent that cannot build the sensor the
	// NodeSensor names (its pod runs another sensor kind): a mismatch, never the driver's failure.
	ReasonSensorUnavailable = "SensorUnavailable"
)
