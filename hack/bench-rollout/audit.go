package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"time"
)

// auditEvent is the part of an audit.k8s.io/v1 Event the benchmark reads.
type auditEvent struct {
	Stage string `json:"stage"`
	Verb  string `json:"verb"`
	User  struct {
		Username string `json:"username"`
	} `json:"user"`
	ObjectRef *struct {
		Resource    string `json:"resource"`
		Subresource string `json:"subresource"`
		Name        string `json:"name"`
	} `json:"objectRef"`
	ResponseStatus *struct {
		Code int `json:"code"`
	} `json:"responseStatus"`
	RequestReceivedTimestamp time.Time `json:"requestReceivedTimestamp"`
	StageTimestamp           time.Time `json:"stageTimestamp"`
}

// auditCounts are the manager's writes (create, update, patch, delete) as the apiserver saw
// them, at stage ResponseComplete.
type auditCounts struct {
	// Before the profile was created (startup), until convergence, and in the whole window
	// (convergence plus the settle time).
	beforeT0, toReady, total int
	byResource               map[string]int // whole window
	byResourceToReady        map[string]int
	byVerb                   map[string]int
	byResVerb                map[string]map[string]int // resource -> "verb code" -> count
	failed                   map[int]int               // response code >= 400 -> count
	peakPerSecond            int
	agentWrites, agentFailed int
	events                   int // all audit events read
	// writes are every write of the manager and the agents, in the order logged, for the
	// figures of other windows (rollout rate, steady state, upgrade).
	writes []auditWrite
}

// auditWrite is one write the apiserver completed.
type auditWrite struct {
	at       time.Time
	done     time.Time // when the response was complete
	agent    bool      // the agents' user; else the manager's
	resource string
	name     string // the object's (a NodeSensor and its Node share their name)
	code     int
}

// windowCounts are the successful writes of one window by resource, manager and agents apart,
// and the refused ones (they store nothing).
type windowCounts struct {
	manager, agents map[string]int
	failed          int
}

func (w windowCounts) total() (manager, agents int) {
	for _, k := range w.manager {
		manager += k
	}
	for _, k := range w.agents {
		agents += k
	}
	return manager, agents
}

// window counts the writes received in [from, to].
func (a auditCounts) window(from, to time.Time) windowCounts {
	w := windowCounts{manager: map[string]int{}, agents: map[string]int{}}
	for _, e := range a.writes {
		if e.at.Before(from) || e.at.After(to) {
			continue
		}
		if e.code >= 400 {
			w.failed++
			continue
		}
		if e.agent {
			w.agents[e.resource]++
		} else {
			w.manager[e.resource]++
		}
	}
	return w
}

func readAudit(path string, t0, tReady, tEnd time.Time) (auditCounts, error) {
	a := auditCounts{byResource: map[string]int{}, byResourceToReady: map[string]int{}, byVerb: map[string]int{}, byResVerb: map[string]map[string]int{}, failed: map[int]int{}}
	f, err := os.Open(path)
	if err != nil {
		return a, err
	}
	defer f.Close()
	perSecond := map[int64]int{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 4<<20), 4<<20)
	for sc.Scan() {
		var e auditEvent
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			continue
		}
		a.events++
		if e.Stage != "ResponseComplete" {
			continue
		}
		switch e.Verb {
		case "create", "update", "patch", "delete", "deletecollection":
		default:
			continue
		}
		code := 0
		if e.ResponseStatus != nil {
			code = e.ResponseStatus.Code
		}
		if e.User.Username != agentsUser && e.User.Username != managerUser {
			continue
		}
		at := e.RequestReceivedTimestamp
		res, name := "?", ""
		if e.ObjectRef != nil {
			res, name = e.ObjectRef.Resource, e.ObjectRef.Name
			if e.ObjectRef.Subresource != "" {
				res += "/" + e.ObjectRef.Subresource
			}
		}
		a.writes = append(a.writes, auditWrite{at: at, done: e.StageTimestamp, agent: e.User.Username == agentsUser, resource: res, name: name, code: code})
		if e.User.Username == agentsUser {
			a.agentWrites++
			if code >= 400 {
				a.agentFailed++
			}
			continue
		}
		if at.Before(t0) {
			a.beforeT0++
			continue
		}
		if at.After(tEnd) {
			continue
		}
		a.total++
		a.byResource[res]++
		a.byVerb[e.Verb]++
		if a.byResVerb[res] == nil {
			a.byResVerb[res] = map[string]int{}
		}
		a.byResVerb[res][fmt.Sprintf("%s %d", e.Verb, code)]++
		if !tReady.IsZero() && !at.After(tReady) {
			a.toReady++
			a.byResourceToReady[res]++
		}
		if code >= 400 {
			a.failed[code]++
		}
		perSecond[at.Unix()]++
	}
	for _, n := range perSecond {
		if n > a.peakPerSecond {
			a.peakPerSecond = n
		}
	}
	return a, sc.Err()
}

// slotLatency is how long a node held its rollout slot in [from, to], in two parts, over the
// nodes whose NodeSensor was created and whose condition was then first written in it: from the
// creation to the agent's last status report before the condition (its verdict), and from that
// report to the condition (the manager's pass seeing it).
type slotLatency struct {
	nodes              int
	toReport, toVerify []time.Duration // sorted
}

func (a auditCounts) slotLatency(from, to time.Time) slotLatency {
	created, report := map[string]time.Time{}, map[string]time.Time{}
	var l slotLatency
	for _, e := range a.writes {
		if e.code >= 300 || e.at.Before(from) || e.at.After(to) || e.name == "" {
			continue
		}
		switch {
		case e.resource == "nodesensors" && !e.agent:
			if _, ok := created[e.name]; !ok {
				created[e.name] = e.done
			}
		case e.resource == "nodesensors/status" && e.agent:
			report[e.name] = e.done
		case e.resource == "nodes/status" && !e.agent:
			c, ok := created[e.name]
			r, reported := report[e.name]
			if !ok || !reported {
				continue
			}
			l.nodes++
			l.toReport = append(l.toReport, r.Sub(c))
			l.toVerify = append(l.toVerify, e.at.Sub(r))
			delete(created, e.name) // counted once
		}
	}
	slices.Sort(l.toReport)
	slices.Sort(l.toVerify)
	return l
}

// quantile is the q-quantile of sorted durations (0 without any).
func quantile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[int(q*float64(len(sorted)-1))]
}
