// Package fault is DriverPilot's fault suite (issue 11, "Prove it"). During a rollout of 60
// simulated nodes (maxUnavailable 3, one canary, taint on) it injects, one after the other:
//
//   - the manager killed with SIGKILL and started again;
//   - the API server stopped (SIGTERM, SIGKILL after 3s) and started again on the same port and
//     certificates, etcd keeping its data (an outage longer than the heartbeat timeout);
//   - a Node deleted while verifying, then registered again under its name with a new boot;
//   - a NodeSensor deleted;
//   - the agents of the nodes verifying silent for longer than the heartbeat timeout (their
//     rollout slots must hold);
//   - every agent silent for longer than the heartbeat timeout (a brownout);
//   - hostile agent statuses on verified nodes, written with the agents' identity: Passed without
//     checks, without ExeUpperLayer, with ExeUpperLayer Failed, with another or an empty boot ID,
//     for the attempt before (never proven), for the next attempt, for another driver; a 1 MiB
//     self-test message, a 512 KiB check message with a 2 KiB reason, and a 321-character kernel
//     release followed by a failed self-test. What the API server refuses is recorded as refused;
//     what it accepts must be handled. After longer than the grace below, an honest agent takes
//     over (a restart) and the node must be verified again.
//
// The manager runs as the product runs it: the driverpilot binary, built by the test, as a
// separate process with its own kubeconfig. The agents are internal/simagent's simulated agents,
// which write what the real agent writes. A watcher follows Nodes and NodeSensors through the
// whole run and checks, continuously:
//
//   - no node is RuntimeSecurityReady=True without a passing self-test under its current
//     settings: current attempt (or the attempt before, while re-verifying, if that one was seen
//     proven), current driver, a non-empty boot ID equal to the probed one, every check the spec
//     requires (the API default when it names none) Passed and none Failed. Judged when a node
//     turns True, against its NodeSensor as it was just before the node's write (by
//     resourceVersion), and for as long as it stays True: the manager gets a 10s grace to react
//     to a status that stops proving it;
//   - the manager never starts a node (a waiting node, or a proven one to re-verify) while
//     maxUnavailable others are verifying, judged by resourceVersion. A fallback after a failed
//     or disproven verdict is no start: that node was unavailable already;
//   - no taint is added, during an API outage or a brownout, to a node that was untainted when it
//     began.
//
// After each fault the suite waits for the loop to reconverge; at the end every selected node
// must have its NodeSensor, owned by the node as it is now, and be Verified or carry a recorded
// reason, with the profile counting every node. A table of faults, what the loop did, the
// invariants and the time to reconverge goes to the test log (go test -v shows it).
//
// The suite needs the control-plane binaries (KUBEBUILDER_ASSETS, set by hack/test.sh; `make
// fault` runs it alone) and skips without them; CI turns that skip into a failure. It takes about
// two minutes on two busy cores.
package fault
