// Package fault is DriverPilot's fault suite (issue 11, "Prove it"): during a rollout of 60
// simulated nodes it kills the manager with SIGKILL and restarts it, restarts the API server
// (etcd keeps running), deletes a Node and a NodeSensor, writes hostile agent statuses
// (oversized strings, Passed without checks, another or an empty boot ID, another attempt or
// driver) and silences every agent for longer than the heartbeat timeout.
//
// The manager runs as the product runs it: the driverpilot binary, built by the test, as a
// separate process with a kubeconfig. The agents are internal/simagent's simulated agents.
// A watcher follows Nodes and NodeSensors through the whole run and checks, on every event:
//
//   - no node is RuntimeSecurityReady=True without a passing self-test under its current
//     settings (current attempt, driver and a non-empty boot ID equal to the probed one, every
//     check the spec requires Passed): at the moment a node turns True (judged against the
//     NodeSensor as it was just before the node's write, by resourceVersion) and while it stays
//     True (the manager has a short grace to react to a status that stops proving it);
//   - never more than maxUnavailable nodes verifying at once (a driver assigned by the manager,
//     no verdict for that attempt yet);
//   - no taint added to a node that was untainted when a brownout began.
//
// After each fault the suite waits for the loop to reconverge, and at the end every selected
// node must have its NodeSensor (owned by the node as it is now) and be Verified or carry a
// recorded reason. A table of faults, what the loop did, the invariants and the time to
// reconverge goes to the test log.
//
// The suite needs the control-plane binaries (KUBEBUILDER_ASSETS, set by hack/test.sh) and
// skips without them; CI turns that skip into a failure.
package fault
