package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
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
	} `json:"objectRef"`
	ResponseStatus *struct {
		Code int `json:"code"`
	} `json:"responseStatus"`
	RequestReceivedTimestamp time.Time `json:"requestReceivedTimestamp"`
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
	agent    bool // the agents' user; else the manager's
	resource string
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
		res := "?"
		if e.ObjectRef != nil {
			res = e.ObjectRef.Resource
			if e.ObjectRef.Subresource != "" {
				res += "/" + e.ObjectRef.Subresource
			}
		}
		a.writes = append(a.writes, auditWrite{at: at, agent: e.User.Username == agentsUser, resource: res, code: code})
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
