package probe

import (
	"context"
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf/btf"

	"github.com/driverpilot/driverpilot/api/v1alpha1"
	"github.com/driverpilot/driverpilot/config/knownissues"
	"github.com/driverpilot/driverpilot/internal/selection"
)

// BTF layouts a fixture can have.
const (
	btfNone           = "none"
	btfVmlinux        = "vmlinux"         // overlay is a module without module BTF
	btfVmlinuxOverlay = "vmlinux+overlay" // overlay built in
	btfModule         = "vmlinux+module"  // overlay module with its own BTF
)

// vmlinuxBTF returns a small valid raw BTF blob; with overlay it describes struct ovl_inode too.
func vmlinuxBTF(t *testing.T, overlay bool) ([]byte, int) {
	t.Helper()
	i := &btf.Int{Name: "int", Size: 4, Encoding: btf.Signed}
	types := []btf.Type{i, &btf.Struct{Name: "inode", Size: 4, Members: []btf.Member{{Name: "i_mode", Type: i}}}}
	if overlay {
		types = append(types, &btf.Struct{Name: overlayProbeType, Size: 4, Members: []btf.Member{{Name: "flags", Type: i}}})
	}
	b, err := btf.NewBuilder(types, nil)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := b.Marshal(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	return raw, len(types)
}

// moduleBTF hand-encodes split BTF on top of base, holding one empty struct ovl_inode: the
// Builder has no split mode. Type IDs and string offsets continue those of the base.
func moduleBTF(t *testing.T, base []byte) []byte {
	t.Helper()
	bo := binary.NativeEndian
	baseStrLen := bo.Uint32(base[20:24])
	strs := []byte(overlayProbeType + "\x00")
	var types []byte
	types = bo.AppendUint32(types, baseStrLen) // name_off: first string of the split table
	types = bo.AppendUint32(types, 4<<24)      // info: kind STRUCT, no members
	types = bo.AppendUint32(types, 8)          // size
	var out []byte
	out = bo.AppendUint16(out, 0xeB9F)
	out = append(out, 1, 0)                        // version, flags
	out = bo.AppendUint32(out, 24)                 // hdr_len
	out = bo.AppendUint32(out, 0)                  // type_off
	out = bo.AppendUint32(out, uint32(len(types))) // type_len
	out = bo.AppendUint32(out, uint32(len(types))) // str_off
	out = bo.AppendUint32(out, uint32(len(strs)))  // str_len
	return append(append(out, types...), strs...)
}

// fixtureRoot copies testdata/<name> to a temporary root and adds the BTF files.
func fixtureRoot(t *testing.T, name, layout string) string {
	t.Helper()
	root := t.TempDir()
	if err := os.CopyFS(root, os.DirFS(filepath.Join("testdata", name))); err != nil {
		t.Fatal(err)
	}
	if layout == btfNone {
		return root
	}
	dir := filepath.Join(root, "sys/kernel/btf")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	vmlinux, _ := vmlinuxBTF(t, layout == btfVmlinuxOverlay)
	if err := os.WriteFile(filepath.Join(dir, "vmlinux"), vmlinux, 0o444); err != nil {
		t.Fatal(err)
	}
	if layout == btfModule {
		if err := os.WriteFile(filepath.Join(dir, "overlay"), moduleBTF(t, vmlinux), 0o444); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

// recorded returns eBPF answers as a node would have given them.
func recorded(tpbtf, rawtp, ringbuf v1alpha1.Answer) Abilities {
	fact := func(a v1alpha1.Answer) v1alpha1.BoolFact {
		f := v1alpha1.BoolFact{Answer: a, Source: "recorded"}
		if a == v1alpha1.AnswerNo {
			f.Error = "recorded: invalid argument"
		}
		return f
	}
	return AbilitiesFunc(func(context.Context) v1alpha1.EBPFFacts {
		return v1alpha1.EBPFFacts{TPBTF: fact(tpbtf), RawTracepoint: fact(rawtp), RingBuffer: fact(ringbuf)}
	})
}

const (
	Y = v1alpha1.AnswerYes
	N = v1alpha1.AnswerNo
	U = v1alpha1.AnswerUnknown
)

func TestFixtures(t *testing.T) {
	issues, err := knownissues.Default()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name      string
		btf       string
		abilities Abilities
		in        Inputs

		release, version, arch string
		distro, distroVersion  string
		lockdown               string // "" = Unknown
		btfVmlinux             v1alpha1.Answer
		overlayTypes           string
		modSupported, modOff   v1alpha1.Answer
		secureBoot, overlayfs  v1alpha1.Answer
		cloud                  string // "" = Unknown

		falco  string // "" = Builtin sensor
		driver v1alpha1.Driver
	}{
		{
			name: "eks-al2-5.10", btf: btfVmlinux, abilities: recorded(Y, Y, Y),
			release: "5.10.219-208.866.amzn2.x86_64", version: "5.10.219", distro: "amzn", distroVersion: "2",
			lockdown: "none", btfVmlinux: Y, overlayTypes: v1alpha1.OverlayTypesAbsent,
			modSupported: Y, modOff: N, secureBoot: N, overlayfs: Y, cloud: "aws",
			falco: "0.38.1", driver: v1alpha1.DriverEBPF,
		},
		{
			name: "eks-al2-5.10", btf: btfVmlinux, abilities: recorded(Y, Y, Y),
			release: "5.10.219-208.866.amzn2.x86_64", version: "5.10.219", distro: "amzn", distroVersion: "2",
			lockdown: "none", btfVmlinux: Y, overlayTypes: v1alpha1.OverlayTypesAbsent,
			modSupported: Y, modOff: N, secureBoot: N, overlayfs: Y, cloud: "aws",
			falco: "0.38.2", driver: v1alpha1.DriverModernEBPF,
		},
		{
			name: "bottlerocket", btf: btfModule, abilities: recorded(Y, Y, Y),
			in:      Inputs{ProviderID: "aws:///us-west-2a/i-0123456789abcdef0"},
			release: "6.1.90", version: "6.1.90", distro: "bottlerocket", distroVersion: "1.20.3",
			lockdown: "integrity", btfVmlinux: Y, overlayTypes: v1alpha1.OverlayTypesModule,
			modSupported: Y, modOff: N, secureBoot: N, overlayfs: Y, cloud: "aws",
			driver: v1alpha1.DriverModernEBPF,
		},
		{
			name: "cos-117", btf: btfVmlinuxOverlay, abilities: recorded(Y, Y, Y),
			release: "6.6.52+", version: "6.6.52", distro: "cos", distroVersion: "117",
			lockdown: "none", btfVmlinux: Y, overlayTypes: v1alpha1.OverlayTypesVmlinux,
			modSupported: Y, modOff: N, secureBoot: N, overlayfs: Y, cloud: "gce",
			falco: "0.39.1", driver: v1alpha1.DriverEBPF,
		},
		{
			name: "aks-ubuntu-22.04", btf: btfModule, abilities: recorded(Y, Y, Y),
			release: "5.15.0-1052-azure", version: "5.15.0", distro: "ubuntu", distroVersion: "22.04",
			lockdown: "none", btfVmlinux: Y, overlayTypes: v1alpha1.OverlayTypesModule,
			modSupported: Y, modOff: N, secureBoot: N, overlayfs: Y, cloud: "azure",
			falco: "0.38.1", driver: v1alpha1.DriverModernEBPF,
		},
		{
			name: "rhel-9.4", btf: btfModule, abilities: recorded(Y, Y, Y),
			in:      Inputs{Labels: map[string]string{"kubernetes.io/hostname": "metal-1"}},
			release: "5.14.0-427.13.1.el9_4.x86_64", version: "5.14.0", distro: "rhel", distroVersion: "9.4",
			lockdown: "integrity", btfVmlinux: Y, overlayTypes: v1alpha1.OverlayTypesModule,
			modSupported: Y, modOff: N, secureBoot: Y, overlayfs: Y,
			falco: "0.38.1", driver: v1alpha1.DriverModernEBPF,
		},
		{
			name: "talos", btf: btfVmlinuxOverlay, abilities: recorded(Y, Y, Y),
			in:      Inputs{Labels: map[string]string{"cloud.google.com/gke-nodepool": "pool-1"}},
			release: "6.6.43-talos", version: "6.6.43", arch: "amd64", distro: "talos", distroVersion: "v1.7.6",
			lockdown: "confidentiality", btfVmlinux: Y, overlayTypes: v1alpha1.OverlayTypesVmlinux,
			modSupported: Y, modOff: Y, secureBoot: N, overlayfs: Y, cloud: "gce",
			falco: "0.39.2", driver: "",
		},
		{
			name: "ubuntu-18.04-no-btf", btf: btfNone, abilities: recorded(N, Y, N),
			release: "4.15.0-213-generic", version: "4.15.0", distro: "ubuntu", distroVersion: "18.04",
			lockdown: "none", btfVmlinux: N, overlayTypes: v1alpha1.OverlayTypesAbsent,
			modSupported: Y, modOff: N, secureBoot: N, overlayfs: N,
			falco: "0.38.2", driver: v1alpha1.DriverEBPF,
		},
		{
			name: "firecracker-6.18", btf: btfVmlinuxOverlay, abilities: recorded(Y, Y, Y),
			release: "6.18.44-fc-v657", version: "6.18.44", arch: "amd64", distro: "debian", distroVersion: "12",
			lockdown: "", btfVmlinux: Y, overlayTypes: v1alpha1.OverlayTypesVmlinux,
			modSupported: N, modOff: U, secureBoot: N, overlayfs: Y,
			driver: v1alpha1.DriverModernEBPF,
		},
	} {
		t.Run(tc.name+"/"+tc.falco, func(t *testing.T) {
			root := fixtureRoot(t, tc.name, tc.btf)
			p := &Prober{Root: root, Abilities: tc.abilities, Now: func() time.Time { return time.Unix(1700000000, 0) }}
			f := p.Probe(context.Background(), tc.in)

			str := func(field string, got v1alpha1.StringFact, want string) {
				t.Helper()
				if got.Value != want {
					t.Errorf("%s = %q (error %q), want %q", field, got.Value, got.Error, want)
				}
				if want == "" && got.Error == "" {
					t.Errorf("%s unknown without an error", field)
				}
				if want != "" && got.Source == "" {
					t.Errorf("%s has no source", field)
				}
			}
			boolean := func(field string, got v1alpha1.BoolFact, want v1alpha1.Answer) {
				t.Helper()
				if got.Answer != want {
					t.Errorf("%s = %s (%s%s), want %s", field, got.Answer, got.Source, got.Error, want)
				}
				if want == U && got.Error == "" {
					t.Errorf("%s Unknown without an error", field)
				}
			}
			str("kernel.release", f.Kernel.Release, tc.release)
			str("kernel.version", f.Kernel.Version, tc.version)
			str("kernel.architecture", f.Kernel.Architecture, tc.arch)
			if !f.Kernel.BootID.Known() {
				t.Errorf("boot ID unknown: %s", f.Kernel.BootID.Error)
			}
			if f.Distro.ID != tc.distro || f.Distro.VersionID != tc.distroVersion || f.Distro.PrettyName == "" {
				t.Errorf("distro = %+v, want %s %s", f.Distro, tc.distro, tc.distroVersion)
			}
			if !strings.HasPrefix(f.Distro.Source, root) {
				t.Errorf("distro read from %s, outside the root %s", f.Distro.Source, root)
			}
			str("lockdown", f.Lockdown, tc.lockdown)
			boolean("btf.vmlinux", f.BTF.Vmlinux, tc.btfVmlinux)
			str("btf.overlayTypes", f.BTF.OverlayTypes, tc.overlayTypes)
			boolean("modules.supported", f.Modules.Supported, tc.modSupported)
			boolean("modules.disabled", f.Modules.Disabled, tc.modOff)
			boolean("secureBoot", f.SecureBoot, tc.secureBoot)
			boolean("overlayfs", f.Overlayfs, tc.overlayfs)
			str("cloud", f.Cloud, tc.cloud)
			if f.ProbeTime == nil || f.ProbeTime.Unix() != 1700000000 {
				t.Errorf("probeTime = %v", f.ProbeTime)
			}

			sensor := v1alpha1.SensorSpec{Kind: v1alpha1.SensorBuiltin}
			if tc.falco != "" {
				sensor = v1alpha1.SensorSpec{Kind: v1alpha1.SensorFalco, FalcoVersion: tc.falco}
			}
			d, err := selection.Decide(selection.Input{Facts: f, Sensor: sensor, KnownIssues: issues})
			if err != nil {
				t.Fatal(err)
			}
			if d.Driver != tc.driver {
				t.Errorf("decision = %q (candidates %v, reasons %+v), want %q", d.Driver, d.Candidates, d.Reasons, tc.driver)
			}
		})
	}
}

func TestNoAbilitiesProberIsUnknown(t *testing.T) {
	root := fixtureRoot(t, "eks-al2-5.10", btfVmlinux)
	p := New(root)
	if p.Live || p.Abilities != nil {
		t.Fatalf("a fixture root was taken for the running kernel: %+v", p)
	}
	f := p.Probe(context.Background(), Inputs{})
	for name, b := range map[string]v1alpha1.BoolFact{"tpBTF": f.EBPF.TPBTF, "rawTracepoint": f.EBPF.RawTracepoint, "ringBuffer": f.EBPF.RingBuffer} {
		if b.Answer != U || !strings.Contains(b.Error, "another boot ID") {
			t.Errorf("%s = %+v, want Unknown naming the boot ID mismatch", name, b)
		}
	}
}

func TestMissingRootIsUnknownEverywhere(t *testing.T) {
	p := &Prober{Root: filepath.Join(t.TempDir(), "absent")}
	f := p.Probe(context.Background(), Inputs{})
	for name, s := range map[string]v1alpha1.StringFact{"release": f.Kernel.Release, "arch": f.Kernel.Architecture,
		"bootID": f.Kernel.BootID, "lockdown": f.Lockdown, "cloud": f.Cloud, "overlayTypes": f.BTF.OverlayTypes} {
		if s.Known() || s.Error == "" {
			t.Errorf("%s = %+v, want unknown with an error", name, s)
		}
	}
	for name, b := range map[string]v1alpha1.BoolFact{"vmlinux": f.BTF.Vmlinux, "modules": f.Modules.Supported,
		"secureBoot": f.SecureBoot, "overlayfs": f.Overlayfs} {
		if b.Answer != U {
			t.Errorf("%s = %+v, want Unknown", name, b)
		}
	}
	if f.Distro.ID != "" || f.Distro.Error == "" {
		t.Errorf("distro = %+v", f.Distro)
	}
}

func TestUnreadableSecureBootVariable(t *testing.T) {
	root := fixtureRoot(t, "rhel-9.4", btfNone)
	v := filepath.Join(root, "sys/firmware/efi/efivars", secureBootVar)
	if err := os.WriteFile(v, []byte{6, 0, 0, 0}, 0o644); err != nil {
		t.Fatal(err)
	}
	if b := (&Prober{Root: root}).secureBoot(); b.Answer != U || !strings.Contains(b.Error, "too short") {
		t.Errorf("short variable: %+v", b)
	}
	if err := os.Remove(v); err != nil {
		t.Fatal(err)
	}
	if b := (&Prober{Root: root}).secureBoot(); b.Answer != U || !strings.Contains(b.Error, "not mounted") {
		t.Errorf("empty efivars: %+v", b)
	}
}

func TestProviderFromID(t *testing.T) {
	for id, want := range map[string]string{
		"aws:///us-east-1a/i-0abc":                  "aws",
		"gce://my-project/europe-west1-b/node-1":    "gce",
		"azure:///subscriptions/x/resourceGroups/y": "azure",
		"kind://docker/kind/kind-control-plane":     "kind",
		"":                                          "",
		"i-0abc":                                    "",
		"Bad Scheme://x":                            "",
	} {
		got, ok := ProviderFromID(id)
		if got != want || ok != (want != "") {
			t.Errorf("ProviderFromID(%q) = %q, %v; want %q", id, got, ok, want)
		}
	}
}
