//go:build ignore

// SPDX-License-Identifier: (GPL-2.0-only OR MIT)
/*
 * Exec events for DriverPilot's built-in sensor: at sched_process_exec, work out in the kernel
 * whether the new executable comes from an overlayfs upper layer, a lower layer or a memfd, and
 * send only those execs to user space (every other exec costs a few hundred nanoseconds and no
 * event).
 *
 * Lower-layer overlay execs (nearly every exec on a Kubernetes node: container processes run from
 * their image) are dropped in the kernel unless user space sets SETTING_SEND_LOWER in settings,
 * which the self-test does while it runs (its lower-layer check needs the event). Upper-layer and
 * memfd execs are always sent.
 *
 * Events are batched: the ring buffer variant writes with BPF_RB_NO_WAKEUP and forces a wakeup
 * only once half the ring is pending; the perf variant relies on the reader's watermark (half
 * of each per-CPU buffer). User space reads at least every flush interval (agent/sensor), which bounds the
 * detection latency. An event the kernel could not write (a full buffer) is counted in counters
 * (COUNTER_DROPPED), so user space can tell a lost event from one that never happened.
 *
 * Two attach variants, matching the drivers a node can be given:
 *   modern_ebpf: tp_btf/sched_process_exec + BPF ring buffer   (dp_exec_tp_btf, events_rb)
 *   ebpf:        raw_tp/sched_process_exec + perf event array  (dp_exec_raw_tp, events_perf)
 * User space loads one program and its map; the other pair is never created.
 *
 * Upper vs lower is decided two ways (falco#3286 was one way silently failing):
 *   CORE:        struct ovl_inode's __upperdentry through CO-RE, where overlay's types are in
 *                vmlinux or module BTF;
 *   InodeOffset: the pointer right after the embedded struct inode (inode + sizeof(struct inode)),
 *                which needs only vmlinux BTF. In every kernel since 4.13, ovl_inode places
 *                __upperdentry directly after vfs_inode.
 * CORE decides when it runs; the event says whether both ran and whether they agreed. Where CORE
 * finds __upperdentry at the InodeOffset position (checked at load time), one read serves both.
 * Inode numbers are never compared: overlay keeps the lower inode number after a copy-up.
 *
 * At sched_process_exec a script's interpreter is the executable: a dropped script run by an
 * image shell reads as lower layer, as it does for Falco.
 */
#include "vmlinux_subset.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>

char __license[] SEC("license") = "Dual MIT/GPL";

#define OVERLAYFS_SUPER_MAGIC 0x794c7630
#define TMPFS_MAGIC 0x01021994
#define HUGETLBFS_MAGIC 0x958458f6
/* vfsmount.mnt_flags bit of kernel-internal mounts (kern_mount), stable since 2.6.x. */
#define MNT_INTERNAL 0x4000
#define CAP_DAC_OVERRIDE 1
#define S_IWUSR 00200
#define S_IWGRP 00020
#define S_IWOTH 00002

#define COMM_LEN 16
#define FILENAME_LEN 64
#define CGROUP_NAME_LEN 96
#define NAMES_LEN (FILENAME_LEN + 2 * CGROUP_NAME_LEN)

/* Bits of exec_event.flags; the Go decoder mirrors them (agent/sensor/decode.go). */
enum exe_flag {
	EXE_WRITABLE = 1 << 0,
	EXE_UPPER_LAYER = 1 << 1,
	EXE_FROM_MEMFD = 1 << 2,
	EXE_LOWER_LAYER = 1 << 3,
	EXE_OVERLAY = 1 << 4,
};

/* exec_event.method: which method decided upper vs lower. */
enum layer_method {
	METHOD_NONE = 0,
	METHOD_CORE = 1,
	METHOD_INODE_OFFSET = 2,
};

/* exec_event.agreement: whether both methods ran and agreed. */
enum method_agreement {
	AGREEMENT_SINGLE = 0, /* only one method could run */
	AGREEMENT_AGREE = 1,
	AGREEMENT_DISAGREE = 2,
};

/* A record is the fixed part up to names plus the bytes of names in use: the names are packed,
 * each NUL-terminated, so a record is as long as its names and no longer (at most 304 bytes).
 * The cgroup names are sent only when they differ from those of the previous event sent from the
 * same CPU (cgroup_cached says they were left out; user space keeps each CPU's last names): a
 * container's events carry them once per CPU, and most records are about 70 bytes, not 220. */
struct exec_event {
	__u64 ktime_ns; /* bpf_ktime_get_ns (CLOCK_MONOTONIC) at the exec */
	__u32 pid;      /* thread id */
	__u32 tgid;     /* process id */
	__u32 flags;    /* enum exe_flag bits */
	__u32 cpu;      /* the CPU the program ran on */
	__u8 method;    /* enum layer_method */
	__u8 agreement; /* enum method_agreement */
	/* Bytes of names taken by each name, its NUL included, in this order; 0: not in the record. */
	__u8 cgroup_len;        /* the task's memory cgroup's name (a container ID), at most CGROUP_NAME_LEN */
	__u8 cgroup_parent_len; /* its parent's name (a pod), at most CGROUP_NAME_LEN */
	__u8 filename_len;      /* d_name of the exe's dentry, at most FILENAME_LEN */
	/* 1: the cgroup names are those of the previous event sent from this CPU, and left out. */
	__u8 cgroup_cached;
	__u8 _pad[2];
	char comm[COMM_LEN];
	char names[NAMES_LEN];
};

/* Bits of settings[0], written by user space while the program runs. */
enum setting_flag {
	SETTING_SEND_LOWER = 1 << 0, /* send lower-layer overlay execs too (during a self-test) */
};

/* Indexes of the per-CPU counters map. */
enum counter {
	COUNTER_DROPPED = 0, /* events the ring buffer or perf buffer had no room for */
	COUNTER_MAX = 1,
};

/* Keep these types in BTF so bpf2go generates their Go twins. */
const struct exec_event *unused_exec_event __attribute__((unused));
const enum exe_flag *unused_exe_flag __attribute__((unused));
const enum layer_method *unused_layer_method __attribute__((unused));
const enum method_agreement *unused_method_agreement __attribute__((unused));
const enum setting_flag *unused_setting_flag __attribute__((unused));
const enum counter *unused_counter __attribute__((unused));

/* overlayfs's private inode, only the fields read here; resolved by CO-RE where its BTF exists. */
struct ovl_inode___dp {
	struct inode vfs_inode;
	struct dentry *__upperdentry;
} __attribute__((preserve_access_index));

/* Set by user space before load to skip the CO-RE method, as on a kernel without overlay BTF
 * (falco#3286); lets tests and diagnostics exercise the InodeOffset path on any kernel. */
const volatile __u8 force_inode_offset = 0;

/* Pending bytes in events_rb at which the program wakes the reader: half the ring, set by user
 * space with the ring's size (a constant here saves a helper call per event). The other half is
 * room for what comes while the reader wakes. */
const volatile __u64 ringbuf_wakeup_bytes = 256 * 1024 / 2;

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} events_rb SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERF_EVENT_ARRAY);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(__u32));
} events_perf SEC(".maps");

/* Where an event is put together: a record is sent with only the bytes of names in use, and a
 * map value, unlike the stack, takes a variable offset on every kernel the drivers support.
 * cgroup_id is the cgroup whose names the previous event sent from this CPU carried: while a
 * CPU's execs come from the same cgroup (a container's), its names are neither read nor sent
 * again. The key is the kernfs node id, unique for the boot and never reused, not its address,
 * which a new cgroup could take over. A renamed cgroup keeps its id: its old name stays until
 * another cgroup's exec on that CPU (container runtimes do not rename). An event the buffer had
 * no room for resets it, so the next event carries the names again. */
struct scratch {
	struct exec_event ev;
	__u64 cgroup_id; /* kernfs node id of the cgroup of the last event sent from this CPU; 0: none */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct scratch);
} scratch SEC(".maps");

/* One entry of enum setting_flag bits. An array map rather than a global: it needs no mmapable
 * maps, so the ebpf driver keeps working on kernels that lack them. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} settings SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, COUNTER_MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

/* RD(direct, src, a, ...) reads src->a->...: with direct, as plain loads (tp_btf: the program's
 * arguments are BTF-typed pointers, which the verifier lets it dereference, a fault reading as
 * zero), else each pointer with bpf_probe_read_kernel (raw_tp: the arguments are untyped). direct
 * is a constant at every call site (the functions are inlined), so the other branch is compiled
 * out; field offsets are CO-RE relocations either way. A helper call costs tens of nanoseconds, a
 * load one or two, and an exec runs through a dozen of them. */
#define RD(direct, src, a, ...) \
	((direct) ? ___arrow(src, a, ##__VA_ARGS__) : BPF_CORE_READ(src, a, ##__VA_ARGS__))

static __always_inline bool send_lower(void)
{
	__u32 key = 0;
	__u32 *v = bpf_map_lookup_elem(&settings, &key);

	return v != NULL && (*v & SETTING_SEND_LOWER) != 0;
}

static __always_inline void count(__u32 key)
{
	/* Per-CPU and the program does not migrate while it runs: no atomic needed. */
	__u64 *v = bpf_map_lookup_elem(&counters, &key);

	if (v != NULL)
		*v += 1;
}

/* An upper dentry counts only when it is there and positive (falco libs PR #1960). */
static __always_inline int dentry_is_upper(struct dentry *upper)
{
	return upper != NULL && BPF_CORE_READ(upper, d_inode) != NULL;
}

/* Returns 1 upper, 0 lower, -1 when overlay's types are not in the kernel's BTF. */
static __always_inline int upper_by_core(struct inode *inode)
{
	if (!bpf_core_type_exists(struct ovl_inode___dp) ||
	    !bpf_core_field_exists(struct ovl_inode___dp, vfs_inode) ||
	    !bpf_core_field_exists(struct ovl_inode___dp, __upperdentry))
		return -1;
	/* container_of(inode, struct ovl_inode, vfs_inode) */
	struct ovl_inode___dp *oi =
		(void *)inode - bpf_core_field_offset(struct ovl_inode___dp, vfs_inode);
	return dentry_is_upper(BPF_CORE_READ(oi, __upperdentry));
}

/* Whether CORE finds __upperdentry where InodeOffset reads it (it does on every kernel since
 * 4.13): then one read serves both methods, which agree by construction, and the second read of
 * the same pointer (two helper calls on every overlay exec) would add nothing but a window for a
 * copy-up to land between the two. Decided at load time (CO-RE constants). */
static __always_inline bool core_reads_inode_offset(void)
{
	if (!bpf_core_type_exists(struct ovl_inode___dp) ||
	    !bpf_core_field_exists(struct ovl_inode___dp, vfs_inode) ||
	    !bpf_core_field_exists(struct ovl_inode___dp, __upperdentry))
		return false;
	return bpf_core_field_offset(struct ovl_inode___dp, __upperdentry) -
		       bpf_core_field_offset(struct ovl_inode___dp, vfs_inode) ==
	       bpf_core_type_size(struct inode);
}

/* Returns 1 upper, 0 lower; needs only struct inode's size from vmlinux BTF. */
static __always_inline int upper_by_inode_offset(struct inode *inode)
{
	struct dentry *upper = NULL;

	bpf_probe_read_kernel(&upper, sizeof(upper), (void *)inode + bpf_core_type_size(struct inode));
	return dentry_is_upper(upper);
}

/* memfd files live on the kernel-internal shmem or hugetlbfs mount; a file merely named "memfd:..."
 * on a real filesystem does not. */
static __always_inline bool exe_from_memfd(const bool direct, struct file *file, unsigned long magic)
{
	if (magic != TMPFS_MAGIC && magic != HUGETLBFS_MAGIC)
		return false;
	return (RD(direct, file, f_path.mnt, mnt_flags) & MNT_INTERNAL) != 0;
}

/* The mode-bit check of generic_permission for the exec's fs ids, plus CAP_DAC_OVERRIDE.
 * Supplementary groups, ACLs and user namespaces are not considered. */
static __always_inline bool exe_writable(const bool direct, struct task_struct *task, struct inode *inode)
{
	const struct cred *cred = RD(direct, task, cred);
	unsigned short mode = RD(direct, inode, i_mode);
	__u32 caps = 0;

	if (RD(direct, inode, i_uid.val) == RD(direct, cred, fsuid.val)) {
		if (mode & S_IWUSR)
			return true;
	} else if (RD(direct, inode, i_gid.val) == RD(direct, cred, fsgid.val)) {
		if (mode & S_IWGRP)
			return true;
	} else if (mode & S_IWOTH) {
		return true;
	}
	bpf_probe_read_kernel(&caps, sizeof(caps),
			      (void *)cred + bpf_core_field_offset(struct cred, cap_effective));
	return (caps & (1U << CAP_DAC_OVERRIDE)) != 0;
}

/* Appends the NUL-terminated string at src, at most max bytes with its NUL, to ev->names at *off;
 * returns the bytes appended (0 when it could not be read, and nothing is appended). */
static __always_inline __u8 append_name(struct exec_event *ev, __u32 *off, const void *src, __u32 max)
{
	__u32 o = *off;
	long n;

	if (o > NAMES_LEN - max) /* never, with the names' maxima; bounds o for the verifier */
		return 0;
	n = bpf_probe_read_kernel_str(&ev->names[o], max, src);
	if (n <= 0)
		return 0;
	*off = o + n;
	return n;
}

/* Puts the names of the current task's cgroup and its parent at the start of ev.names, unless
 * the previous event sent from this CPU had them (struct scratch: then cgroup_cached), and sets
 * off past them. They are read at the exec:
 * user space cannot look them up later for a process that has already exited. The memory
 * controller's cgroup (cgroup v1, where each controller has its own hierarchy) or the default
 * hierarchy's (cgroup v2, or a kernel without the memory controller). */
static __always_inline void fill_cgroup(const bool direct, struct task_struct *task, struct scratch *sc, __u32 *off)
{
	struct exec_event *ev = &sc->ev;
	struct css_set *cset = RD(direct, task, cgroups);
	struct cgroup *cgrp = NULL;

	if (bpf_core_enum_value_exists(enum cgroup_subsys_id, memory_cgrp_id)) {
		int id = bpf_core_enum_value(enum cgroup_subsys_id, memory_cgrp_id);
		struct cgroup_subsys_state *css = NULL;

		if (id >= 0 && id < 16) {
			if (direct)
				css = cset->subsys[id];
			else
				bpf_probe_read_kernel(&css, sizeof(css), &cset->subsys[id]);
			if (css)
				cgrp = RD(direct, css, cgroup);
		}
	}
	if (!cgrp)
		cgrp = RD(direct, cset, dfl_cgrp);
	struct kernfs_node *kn = RD(direct, cgrp, kn);
	ev->cgroup_cached = 0;
	ev->cgroup_len = ev->cgroup_parent_len = 0;
	if (!kn) {
		sc->cgroup_id = 0;
		return;
	}
	/* Without a u64 id (before 5.5) nothing is cached. */
	__u64 kn_id = 0;
	if (bpf_core_field_exists(kn->id) && bpf_core_field_size(kn->id) == sizeof(__u64))
		kn_id = RD(direct, kn, id);
	if (kn_id != 0 && kn_id == sc->cgroup_id) {
		ev->cgroup_cached = 1;
		return;
	}
	ev->cgroup_len = append_name(ev, off, RD(direct, kn, name), CGROUP_NAME_LEN);
	struct kernfs_node___new *kn_new = (void *)kn;
	struct kernfs_node *parent;
	if (bpf_core_field_exists(struct kernfs_node___new, __parent))
		parent = RD(direct, kn_new, __parent);
	else
		parent = RD(direct, kn, parent);
	if (parent)
		ev->cgroup_parent_len = append_name(ev, off, RD(direct, parent, name), CGROUP_NAME_LEN);
	sc->cgroup_id = kn_id;
}

/* Puts together the event for an upper-layer overlay exec, a memfd exec, and a lower-layer
 * overlay exec while SETTING_SEND_LOWER is set, in this CPU's scratch entry; returns its size in
 * bytes, or 0 for every other exec (no event). Every byte up to the returned size is written:
 * the entry holds the previous event's bytes. */
static __always_inline __u32 fill_event(const bool direct, struct task_struct *task, struct file *file,
					 struct scratch **scp)
{
	struct scratch *sc;
	struct inode *inode = RD(direct, file, f_inode);
	unsigned long magic = RD(direct, inode, i_sb, s_magic);
	__u32 zero = 0, off = 0;
	struct exec_event *ev;
	__u32 flags;
	__u8 method = METHOD_NONE, agreement = AGREEMENT_SINGLE;

	if (magic == OVERLAYFS_SUPER_MAGIC) {
		int by_offset = upper_by_inode_offset(inode);
		int by_core = force_inode_offset ? -1 : core_reads_inode_offset() ? by_offset : upper_by_core(inode);
		int upper;

		if (by_core >= 0) {
			upper = by_core;
			method = METHOD_CORE;
			agreement = by_core == by_offset ? AGREEMENT_AGREE : AGREEMENT_DISAGREE;
		} else {
			upper = by_offset;
			method = METHOD_INODE_OFFSET;
		}
		if (!upper && !send_lower())
			return 0;
		flags = EXE_OVERLAY | (upper ? EXE_UPPER_LAYER : EXE_LOWER_LAYER);
	} else if (exe_from_memfd(direct, file, magic)) {
		flags = EXE_FROM_MEMFD;
	} else {
		return 0;
	}

	sc = bpf_map_lookup_elem(&scratch, &zero);
	if (sc == NULL)
		return 0;
	ev = &sc->ev;
	if (exe_writable(direct, task, inode))
		flags |= EXE_WRITABLE;
	__u64 id = bpf_get_current_pid_tgid();
	ev->ktime_ns = bpf_ktime_get_ns();
	ev->pid = (__u32)id;
	ev->tgid = id >> 32;
	ev->flags = flags;
	ev->method = method;
	ev->agreement = agreement;
	ev->cpu = bpf_get_smp_processor_id();
	ev->_pad[0] = ev->_pad[1] = 0;
	bpf_get_current_comm(ev->comm, sizeof(ev->comm));
	fill_cgroup(direct, task, sc, &off);
	ev->filename_len = append_name(ev, &off, RD(direct, file, f_path.dentry, d_name.name), FILENAME_LEN);
	if (off > NAMES_LEN) /* never; bounds the size for the verifier */
		off = NAMES_LEN;
	*scp = sc;
	return offsetof(struct exec_event, names) + off;
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(dp_exec_tp_btf, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	/* p is the exec'ing task, current. */
	struct scratch *sc = NULL;
	__u32 size = fill_event(true, p, bprm->file, &sc);

	if (size == 0 || sc == NULL)
		return 0;
	/* No wakeup per event: the reader polls every flush interval, and is woken early only
	 * when the ring fills up (an exec storm), long before it could overflow. */
	__u64 pending = bpf_ringbuf_query(&events_rb, BPF_RB_AVAIL_DATA);
	__u64 flags = pending >= ringbuf_wakeup_bytes ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP;
	if (bpf_ringbuf_output(&events_rb, &sc->ev, size, flags) != 0) {
		sc->cgroup_id = 0;
		count(COUNTER_DROPPED);
	}
	return 0;
}

SEC("raw_tp/sched_process_exec")
int BPF_PROG(dp_exec_raw_tp, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	struct scratch *sc = NULL;
	__u32 size;

	/* raw_tp's arguments are untyped. Since 5.11 bpf_get_current_task_btf gives a typed pointer
	 * to the task (current, the exec'ing task), from which plain loads reach the file too: the new
	 * mm's exe_file is bprm->file at this tracepoint. Before, every pointer is read with
	 * bpf_probe_read_kernel. */
	if (bpf_core_enum_value_exists(enum bpf_func_id, BPF_FUNC_get_current_task_btf)) {
		struct task_struct *task = bpf_get_current_task_btf();

		size = fill_event(true, task, task->mm->exe_file, &sc);
	} else {
		size = fill_event(false, p, BPF_CORE_READ(bprm, file), &sc);
	}
	if (size == 0 || sc == NULL)
		return 0;
	if (bpf_perf_event_output(ctx, &events_perf, BPF_F_CURRENT_CPU, &sc->ev, size) != 0) {
		sc->cgroup_id = 0;
		count(COUNTER_DROPPED);
	}
	return 0;
}
