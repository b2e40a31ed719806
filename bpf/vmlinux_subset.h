/* SPDX-License-Identifier: (GPL-2.0-only OR MIT) */
/*
 * The few kernel types exec.bpf.c reads, written by hand instead of a full vmlinux.h so the
 * generated object does not depend on the machine it was built on. Every struct is marked
 * preserve_access_index: field offsets are relocated against the running kernel's BTF at load
 * time (CO-RE), so only the names and kinds of the fields listed here matter, not their order.
 */
#ifndef __DRIVERPILOT_VMLINUX_SUBSET_H__
#define __DRIVERPILOT_VMLINUX_SUBSET_H__

typedef signed char __s8;
typedef unsigned char __u8;
typedef short __s16;
typedef unsigned short __u16;
typedef int __s32;
typedef unsigned int __u32;
typedef long long __s64;
typedef unsigned long long __u64;
typedef __u16 __be16;
typedef __u32 __be32;
typedef __u32 __wsum;
typedef _Bool bool;
typedef int pid_t;
#define true 1
#define false 0

/* uapi values used by the maps and helpers (stable ABI). */
enum bpf_map_type {
	BPF_MAP_TYPE_ARRAY = 2,
	BPF_MAP_TYPE_PERF_EVENT_ARRAY = 4,
	BPF_MAP_TYPE_PERCPU_ARRAY = 6,
	BPF_MAP_TYPE_RINGBUF = 27,
};
#define BPF_F_CURRENT_CPU 0xffffffffULL
/* bpf_ringbuf_output flags and bpf_ringbuf_query selectors. */
#define BPF_RB_NO_WAKEUP (1ULL << 0)
#define BPF_RB_FORCE_WAKEUP (1ULL << 1)
#define BPF_RB_AVAIL_DATA 0
#define BPF_RB_RING_SIZE 1

#pragma clang attribute push(__attribute__((preserve_access_index)), apply_to = record)

typedef struct {
	__u32 val;
} kuid_t;

typedef struct {
	__u32 val;
} kgid_t;

struct super_block {
	unsigned long s_magic;
};

struct inode {
	unsigned short i_mode;
	kuid_t i_uid;
	kgid_t i_gid;
	struct super_block *i_sb;
};

struct qstr {
	const unsigned char *name;
};

struct dentry {
	struct qstr d_name;
	struct inode *d_inode;
};

struct vfsmount {
	struct super_block *mnt_sb;
	int mnt_flags;
};

struct path {
	struct vfsmount *mnt;
	struct dentry *dentry;
};

struct file {
	struct path f_path;
	struct inode *f_inode;
};

struct linux_binprm {
	struct file *file;
};

/*
 * kernel_cap_t changed from struct { u32 cap[2]; } to struct { u64 val; } in 6.3; both start
 * with capabilities 0-31 on a little-endian machine, which is all the writable check reads.
 */
typedef struct {
	__u32 lo;
} kernel_cap_t;

struct cred {
	kuid_t fsuid;
	kgid_t fsgid;
	kernel_cap_t cap_effective;
};

/* The cgroup of a task, for the container it runs in: its kernfs node's name is the last path
 * element (a container runtime names it after the container ID) and its parent's the pod's. */
struct kernfs_node {
	const char *name;
	struct kernfs_node *parent; /* renamed __parent in 6.15 (kernfs_node___new) */
	__u64 id; /* unique for the boot, never reused (a u64 since 5.5) */
};

struct kernfs_node___new {
	struct kernfs_node *__parent;
};

struct cgroup {
	struct kernfs_node *kn;
};

struct cgroup_subsys_state {
	struct cgroup *cgroup;
};

struct css_set {
	struct cgroup_subsys_state *subsys[16];
	struct cgroup *dfl_cgrp;
};

/* Values differ with the kernel's configuration: read with bpf_core_enum_value. */
enum cgroup_subsys_id {
	memory_cgrp_id = 4,
};

/* At sched_process_exec the new mm's exe_file is bprm->file (begin_new_exec sets it). */
struct mm_struct {
	struct file *exe_file;
};

struct task_struct {
	int pid;
	int tgid;
	char comm[16];
	const struct cred *cred;
	struct css_set *cgroups;
	struct mm_struct *mm;
};

#pragma clang attribute pop

/* Helper ids, for CO-RE checks of which helpers the running kernel has (a call the kernel lacks
 * sits in a branch the verifier never walks). */
enum bpf_func_id {
	BPF_FUNC_get_current_task_btf = 158,
};

#endif /* __DRIVERPILOT_VMLINUX_SUBSET_H__ */
