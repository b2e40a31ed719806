package falco

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/driverpilot/driverpilot/agent/sensor"
	"github.com/driverpilot/driverpilot/api/v1alpha1"
)

// Alert documents in the shape Falco's documentation gives for json_output: true with
// json_include_output_property and json_include_tags_property (falco.org "Falco Outputs",
// falco.yaml comments of json_output), with the rule's own output format.
const (
	// Falco's rule, as printed by Falco 0.38+ (falco_rules.yaml output of the rule).
	dropAndExecute = `{"hostname":"node-a","output":"12:00:00.000000000: Critical Executing binary not part of base image (proc_exe=/tmp/dp-0a1b2c3d-upper proc_sname=driverpilot gparent=containerd-shim proc_exe_ino_ctime=1700000000000000000 proc_exe_ino_mtime=1700000000000000000 proc_exe_ino_ctime_duration_proc_start=2000000 proc_cwd=/ container_start_ts=1700000000000000000 evt_type=execve user=root user_uid=0 user_loginuid=-1 process=dp-0a1b2c3d-upp proc_exepath=/var/tmp/dp-selftest/merged/dp-0a1b2c3d-upper parent=driverpilot command=dp-0a1b2c3d-upp terminal=0 exe_flags=EXE_WRITABLE|EXE_UPPER_LAYER container_id=3ad7b26ded6d container_image=registry.example/driverpilot container_image_tag=0.1.0 container_name=agent k8s_ns=driverpilot-system k8s_pod_name=driverpilot-agent-x)","output_fields":{"container.id":"3ad7b26ded6d","container.image.repository":"registry.example/driverpilot","container.image.tag":"0.1.0","container.name":"agent","evt.arg.flags":"EXE_WRITABLE|EXE_UPPER_LAYER","evt.time":1700000000000000000,"evt.type":"execve","k8s.ns.name":"driverpilot-system","k8s.pod.name":"driverpilot-agent-x","proc.cmdline":"dp-0a1b2c3d-upp","proc.cwd":"/","proc.exepath":"/var/tmp/dp-selftest/merged/dp-0a1b2c3d-upper","proc.name":"dp-0a1b2c3d-upp","proc.pid":4242,"proc.pname":"driverpilot","proc.tty":0,"user.loginuid":-1,"user.name":"root","user.uid":0},"priority":"Critical","rule":"Drop and execute new binary in container","source":"syscall","tags":["maturity_stable","container","process","mitre_persistence","TA0003","PCI_DSS_11.5.1"],"time":"2024-06-01T12:00:00.123456789Z"}`

	// DriverPilot's rule for a lower-layer exec, evt.arg.flags in the bare-value spelling.
	probeLower = `{"hostname":"node-a","output":"12:00:01.000000000: Warning DriverPilot self-test exec (proc_exepath=/var/tmp/dp-selftest/merged/dp-0a1b2c3d-lower exe_flags=0 is_exe_upper_layer=false is_exe_from_memfd=false process=dp-0a1b2c3d-low proc_pid=4243 container_id=3ad7b26ded6d)","output_fields":{"container.id":"3ad7b26ded6d","evt.arg.flags":"0","proc.exepath":"/var/tmp/dp-selftest/merged/dp-0a1b2c3d-lower","proc.is_exe_from_memfd":false,"proc.is_exe_upper_layer":false,"proc.name":"dp-0a1b2c3d-low","proc.pid":4243},"priority":"Warning","rule":"DriverPilot self-test exec","source":"syscall","tags":["driverpilot"],"time":"2024-06-01T12:00:01Z"}`

	// Falco's rule without output_fields (json_include_output_property only, an older format):
	// everything comes from the output line.
	dropAndExecuteNoFields = `{"output":"12:00:00.000000000: Critical Executing binary not part of base image (process=dp-0a1b2c3d-cop proc_exepath=/w/merged/dp-0a1b2c3d-copyup parent=driverpilot exe_flags=EXE_UPPER_LAYER container_id=3ad7b26ded6d)","priority":"Critical","rule":"Drop and execute new binary in container","time":"2024-06-01T12:00:00Z"}`

	// A memfd exec: the value-with-names spelling, and the kernel's " (deleted)" suffix.
	probeMemfd = `{"output":"x","output_fields":{"evt.arg.flags":"5(EXE_WRITABLE|EXE_FROM_MEMFD)","proc.exepath":"/memfd:dp-0a1b2c3d-memfd (deleted)","proc.name":"3","proc.pid":4244},"priority":"Warning","rule":"DriverPilot self-test exec","time":"2024-06-01T12:00:02Z"}`

	// Recent libs: the lower-layer flag of their own.
	probeLowerFlag = `{"output":"x","output_fields":{"evt.arg.flags":"EXE_WRITABLE|EXE_LOWER_LAYER","proc.exepath":"/w/merged/dp-0a1b2c3d-lower"},"priority":"Warning","rule":"DriverPilot self-test exec","time":"2024-06-01T12:00:01Z"}`

	// Another rule: ignored.
	otherRule = `{"output":"Shell spawned","output_fields":{"proc.exepath":"/bin/sh"},"priority":"Notice","rule":"Terminal shell in container","time":"2024-06-01T12:00:03Z"}`

	// Partial: the probe rule without any flag information; Falco's rule without an exe path.
	probeNoFlags        = `{"output":"DriverPilot self-test exec (proc_exepath=/w/dp-0a1b2c3d-lower)","output_fields":{"proc.exepath":"/w/dp-0a1b2c3d-lower"},"rule":"DriverPilot self-test exec"}`
	dropAndExecuteNoExe = `{"output":"Executing binary not part of base image","output_fields":{"proc.name":"dp-0a1b2c3d-upp","proc.exepath":"<NA>"},"rule":"Drop and execute new binary in container"}`
)

func decode(t *testing.T, doc string) Alert {
	t.Helper()
	dec := json.NewDecoder(strings.NewReader(doc))
	dec.UseNumber()
	var a Alert
	if err := dec.Decode(&a); err != nil {
		t.Fatalf("test document is not JSON: %v", err)
	}
	return a
}

func TestAlertToEvent(t *testing.T) {
	now := time.Date(2024, 6, 1, 12, 0, 5, 0, time.UTC)
	for _, tc := range []struct {
		name, doc, file     string
		flags               sensor.Flags
		upper, lower, memfd bool
		tgid                uint32
		comm                string
		wantTime            time.Time
	}{
		{name: "Falco's rule", doc: dropAndExecute, file: "dp-0a1b2c3d-upper", flags: sensor.FlagWritable | sensor.FlagUpperLayer,
			upper: true, tgid: 4242, comm: "dp-0a1b2c3d-upp", wantTime: time.Date(2024, 6, 1, 12, 0, 0, 123456789, time.UTC)},
		{name: "probe rule, bare value", doc: probeLower, file: "dp-0a1b2c3d-lower", flags: sensor.FlagLowerLayer,
			lower: true, tgid: 4243, comm: "dp-0a1b2c3d-low", wantTime: time.Date(2024, 6, 1, 12, 0, 1, 0, time.UTC)},
		{name: "Falco's rule from the output line", doc: dropAndExecuteNoFields, file: "dp-0a1b2c3d-copyup", flags: sensor.FlagUpperLayer,
			upper: true, comm: "dp-0a1b2c3d-cop", wantTime: time.Date(2024, 6, 1, 12, 0, 0, 0, time.UTC)},
		{name: "memfd, value with names", doc: probeMemfd, file: "memfd:dp-0a1b2c3d-memfd", flags: sensor.FlagWritable | sensor.FlagFromMemfd,
			memfd: true, tgid: 4244, comm: "3", wantTime: time.Date(2024, 6, 1, 12, 0, 2, 0, time.UTC)},
		{name: "lower-layer flag of its own", doc: probeLowerFlag, file: "dp-0a1b2c3d-lower", flags: sensor.FlagWritable | sensor.FlagLowerLayer,
			lower: true, wantTime: time.Date(2024, 6, 1, 12, 0, 1, 0, time.UTC)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := decode(t, tc.doc)
			ev, err := a.Event(now, v1alpha1.DriverKmod)
			if err != nil {
				t.Fatal(err)
			}
			if ev.Filename != tc.file || ev.Flags != tc.flags || ev.TGID != tc.tgid || ev.Comm != tc.comm {
				t.Errorf("event %+v, want file %q flags %s tgid %d comm %q", ev, tc.file, tc.flags, tc.tgid, tc.comm)
			}
			if ev.UpperLayer() != tc.upper || ev.LowerLayer() != tc.lower || ev.FromMemfd() != tc.memfd {
				t.Errorf("upper %v lower %v memfd %v, want %v %v %v", ev.UpperLayer(), ev.LowerLayer(), ev.FromMemfd(), tc.upper, tc.lower, tc.memfd)
			}
			if !ev.Time.Equal(tc.wantTime) || !ev.Received.Equal(now) || ev.Driver != v1alpha1.DriverKmod {
				t.Errorf("time %s received %s driver %s", ev.Time, ev.Received, ev.Driver)
			}
		})
	}
}

func TestAlertToEventRejects(t *testing.T) {
	for _, tc := range []struct {
		name, doc string
		want      error
	}{
		{"another rule", otherRule, ErrOtherRule},
		{"probe rule without flags", probeNoFlags, ErrPartial},
		{"Falco's rule without exe path", dropAndExecuteNoExe, ErrPartial},
		{"unknown flag name", strings.Replace(dropAndExecute, `"evt.arg.flags":"EXE_WRITABLE|EXE_UPPER_LAYER"`, `"evt.arg.flags":"EXE_WRITABLE|EXE_PURPLE"`, 1), ErrPartial},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := decode(t, tc.doc)
			if _, err := a.Event(time.Now(), v1alpha1.DriverKmod); !errors.Is(err, tc.want) {
				t.Fatalf("error %v, want %v", err, tc.want)
			}
		})
	}
}

func TestParseFlags(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want sensor.Flags
		bad  bool
	}{
		{in: "EXE_WRITABLE|EXE_UPPER_LAYER", want: sensor.FlagWritable | sensor.FlagUpperLayer},
		{in: "3(EXE_WRITABLE|EXE_UPPER_LAYER)", want: sensor.FlagWritable | sensor.FlagUpperLayer},
		{in: "3", want: sensor.FlagWritable | sensor.FlagUpperLayer},
		{in: "0x2", want: sensor.FlagUpperLayer},
		{in: "EXE_FROM_MEMFD", want: sensor.FlagFromMemfd},
		{in: "EXE_LOWER_LAYER", want: sensor.FlagLowerLayer},
		{in: "0", want: 0},
		{in: "", want: 0},
		{in: "2(EXE_WRITABLE)", bad: true},
		{in: "EXE_UPPER", bad: true},
		{in: "x(EXE_UPPER_LAYER)", bad: true},
	} {
		got, err := ParseFlags(tc.in)
		if tc.bad != (err != nil) || got != tc.want {
			t.Errorf("ParseFlags(%q) = %s, %v; want %s, error %v", tc.in, got, err, tc.want, tc.bad)
		}
	}
}
