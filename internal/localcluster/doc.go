// Package localcluster brings up a real single-node Kubernetes cluster on this machine and tears it
// down without a trace: etcd, kube-apiserver, kube-controller-manager and kube-scheduler, and a node
// made of containerd, runc, the Debian CNI plugins, the kubelet and kube-proxy (nftables mode).
//
// Every component runs in a network namespace of its own, joined through a veth pair whose host end
// holds 10.250.0.1 and whose node end holds the node's address, 10.250.0.2 (the API server refuses a
// loopback advertise address, and nothing of the cluster may touch the host's own network). The
// mount namespace is the host's: the kubelet needs the host's cgroup mounts and the agent pod needs
// the host's root with HostToContainer propagation, so "/" is made rshared for the cluster's life.
//
// What the cluster changes on the host is recorded before it starts, in the state directory, and put
// back by Down: mount propagation, the sysctls the kubelet rewrites, the cgroups it creates in every
// hierarchy, leftover mounts and processes. Down works from that record, so `hack/cluster down`
// cleans up after a run that was killed.
package localcluster
