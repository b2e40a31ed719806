// Package controllers holds DriverPilot's manager logic: the SecurityProfile reconciler selects
// nodes, keeps one NodeSensor per selected node, decides each node's driver through the selection
// engine, paces verification (canaries, maxUnavailable, pause on failures), falls back to the
// next driver after a failed self-test, and reflects the verdict in the node condition
// RuntimeSecurityReady, the optional taint and the profile's status.
//
// One writer per field: the manager writes NodeSensor.spec, node conditions, taints and the
// profile status; the agent writes NodeSensor.status and nothing else.
package controllers
