// Package controllers holds DriverPilot's manager logic: the SecurityProfile reconciler selects
// nodes, keeps one NodeSensor per selected node, decides each node's driver through the selection
// engine, paces verification (canaries chosen once, maxUnavailable, a pause on failures or on a
// failed or silent canary), falls back to the next driver after a failed self-test, re-verifies
// verified nodes whose proof no longer answers the profile (an edit, an agent upgrade), replaces
// agent pods that run an outdated template (the DaemonSets are OnDelete: at once where a node is
// not protected, else as the rollout lets the node re-verify), and
// reflects the verdict in the node condition RuntimeSecurityReady, the optional taint (none added
// in a brownout) and the profile's status.
//
// The fleet learns (fleet.go): each pass groups the profile's nodes by kernel release,
// architecture, distro and sensor, learns each group's verdicts from its nodes' failed attempts
// and standing passes (selection.Learn), applies them to the group's decisions and gates each
// group behind its first node (rollout.Groups), and writes one FleetGroup per group: the matrix.
//
// A failure on one node is recorded on that node (condition reason, event) and the pass goes on;
// a profile the manager cannot interpret is InvalidSpec and the other profiles go on.
//
// One writer per field: the manager writes NodeSensor.spec, node conditions, taints and the
// profile status; the agent writes NodeSensor.status and nothing else.
package controllers
