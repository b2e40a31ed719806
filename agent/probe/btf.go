package probe

import (
	"errors"
	"fmt"
	"io/fs"

	"github.com/cilium/ebpf/btf"

	"github.com/driverpilot/driverpilot/api/v1alpha1"
)

// overlayProbeType is the overlayfs type whose presence says the overlay types are described:
// the built-in sensor's CO-RE method reads struct ovl_inode (DESIGN §8).
const overlayProbeType = "ovl_inode"

// btf reads the kernel's BTF below the root and says where overlayfs's types are described: in
// vmlinux (overlay built in), in the overlay module's BTF (Linux 5.11+ with module BTF), or
// nowhere — the falco#3286 situation.
func (p *Prober) btf() v1alpha1.BTFFacts {
	var b v1alpha1.BTFFacts
	vmlinuxPath := p.path("/sys/kernel/btf/vmlinux")
	base, err := btf.LoadSpec(vmlinuxPath)
	switch {
	case err == nil:
		b.Vmlinux = boolFact(true, vmlinuxPath)
	case errors.Is(err, fs.ErrNotExist) && p.dirExists("/sys/kernel"):
		b.Vmlinux = boolFact(false, "no "+vmlinuxPath+": kernel built without CONFIG_DEBUG_INFO_BTF")
		b.OverlayTypes = stringFact(v1alpha1.OverlayTypesAbsent, "no vmlinux BTF, so no type information at all")
		return b
	case errors.Is(err, fs.ErrNotExist) || errors.Is(err, fs.ErrPermission):
		b.Vmlinux = boolUnknown(fmt.Errorf("read vmlinux BTF: %w", err))
		b.OverlayTypes = v1alpha1.StringFact{Error: "vmlinux BTF unknown"}
		return b
	default:
		// The file is there but does not parse: tools that need BTF will fail the same way.
		b.Vmlinux = v1alpha1.BoolFact{Answer: v1alpha1.AnswerNo, Source: vmlinuxPath, Error: fmt.Sprintf("parse vmlinux BTF: %v", err)}
		b.OverlayTypes = stringFact(v1alpha1.OverlayTypesAbsent, "vmlinux BTF does not parse")
		return b
	}

	var st *btf.Struct
	if err := base.TypeByName(overlayProbeType, &st); err == nil {
		b.OverlayTypes = stringFact(v1alpha1.OverlayTypesVmlinux, fmt.Sprintf("struct %s in %s (overlay built in)", overlayProbeType, vmlinuxPath))
		return b
	} else if !errors.Is(err, btf.ErrNotFound) {
		b.OverlayTypes = stringErr(fmt.Errorf("look up struct %s in vmlinux BTF: %w", overlayProbeType, err))
		return b
	}

	modPath := p.path("/sys/kernel/btf/overlay")
	mod, err := btf.LoadSplitSpec(modPath, base)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		b.OverlayTypes = stringFact(v1alpha1.OverlayTypesAbsent,
			fmt.Sprintf("struct %s not in vmlinux BTF and no %s (overlay is a module without module BTF, or not loaded)", overlayProbeType, modPath))
		return b
	case err != nil:
		b.OverlayTypes = stringErr(fmt.Errorf("parse overlay module BTF: %w", err))
		return b
	}
	if err := mod.TypeByName(overlayProbeType, &st); err == nil {
		b.OverlayTypes = stringFact(v1alpha1.OverlayTypesModule, fmt.Sprintf("struct %s in %s", overlayProbeType, modPath))
	} else if errors.Is(err, btf.ErrNotFound) {
		b.OverlayTypes = stringFact(v1alpha1.OverlayTypesAbsent, fmt.Sprintf("%s has no struct %s", modPath, overlayProbeType))
	} else {
		b.OverlayTypes = stringErr(fmt.Errorf("look up struct %s in overlay module BTF: %w", overlayProbeType, err))
	}
	return b
}
