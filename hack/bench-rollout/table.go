package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
)

// rowPrefix starts the one machine-readable line each run prints; -table reads them back.
const rowPrefix = "bench-rollout-row: "

// row is one run's figures for the growth table (JSON on one line). Rates and sizes that were
// not measured are -1.
type row struct {
	Nodes            int     `json:"nodes"`
	Profiles         int     `json:"profiles"`
	Converged        bool    `json:"converged"`
	ConvergeS        float64 `json:"convergeSeconds"`
	MgrWritesPerNode float64 `json:"managerWritesPerNode"`
	RawWritesPerS    float64 `json:"rawWritesPerSecond"`
	RolloutWritesPS  float64 `json:"rolloutWritesPerSecond"`
	RateRatio        float64 `json:"rolloutToRawRatio"`
	PeakRSSMiB       float64 `json:"managerPeakRSSMiB"`
	RSSKiBPerNode    float64 `json:"managerRSSKiBPerNode"`
	SteadyBytesPNM   float64 `json:"steadyBytesPerNodePerMinute"`
	SteadyWritesPNM  float64 `json:"steadyWritesPerNodePerMinute"`
	SteadyBeatShare  float64 `json:"steadyHeartbeatShare"` // Lease writes / one per agent per period
	UpgradeS         float64 `json:"upgradeSeconds"`
	UpgradeLeftTrue  int     `json:"upgradeNodesLeftTrue"`
	LoadBefore       string  `json:"loadBefore"`
	LoadAfter        string  `json:"loadAfter"`
	Commit           string  `json:"commit"`
}

func (r report) row() row {
	w := row{
		Nodes: r.o.nodes, Profiles: r.o.profiles, Converged: r.converged, ConvergeS: -1,
		MgrWritesPerNode: per(r.audit.total, r.o.nodes), RawWritesPerS: -1, RolloutWritesPS: -1, RateRatio: -1,
		PeakRSSMiB: float64(r.hwm) / (1 << 20), RSSKiBPerNode: float64(r.hwm) / 1024 / float64(r.o.nodes),
		SteadyBytesPNM: -1, SteadyWritesPNM: -1, UpgradeS: -1, UpgradeLeftTrue: -1,
		LoadBefore: r.load0, LoadAfter: r.loadRollout, Commit: r.commit,
	}
	if r.converged {
		w.ConvergeS = r.tReady.Sub(r.t0).Seconds()
		_, w.RolloutWritesPS, w.RateRatio = r.rolloutRate()
	}
	if len(r.raw.levels) > 0 {
		w.RawWritesPerS = r.raw.best.rate()
	} else {
		w.RateRatio = -1
	}
	if r.steady != nil {
		f := r.steady.figures(r.audit, r.o.nodes)
		w.SteadyBytesPNM, w.SteadyWritesPNM = f.bytesPerNodeMin, f.writesPerNodeMin
		w.SteadyBeatShare = float64(f.window.agents["leases"]) / (float64(r.o.nodes) * f.minutes * 60 / r.o.heartbeat.Seconds())
	}
	if r.up != nil && !r.up.to.IsZero() {
		w.UpgradeS, w.UpgradeLeftTrue = r.up.to.Sub(r.up.from).Seconds(), r.up.left
	}
	return w
}

func (r report) printRow(w io.Writer) {
	b, err := json.Marshal(r.row())
	if err != nil {
		return
	}
	fmt.Fprintf(w, "%s%s\n", rowPrefix, b)
}

// printTable prints the growth table from the row lines in the named files (stdin without any).
func printTable(w io.Writer, files []string) error {
	var rows []row
	read := func(r io.Reader) error {
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			_, js, ok := strings.Cut(sc.Text(), rowPrefix)
			if !ok {
				continue
			}
			var x row
			if err := json.Unmarshal([]byte(js), &x); err != nil {
				return fmt.Errorf("row %q: %w", js, err)
			}
			rows = append(rows, x)
		}
		return sc.Err()
	}
	if len(files) == 0 {
		if err := read(os.Stdin); err != nil {
			return err
		}
	}
	for _, name := range files {
		f, err := os.Open(name)
		if err != nil {
			return err
		}
		err = read(f)
		f.Close()
		if err != nil {
			return err
		}
	}
	if len(rows) == 0 {
		return fmt.Errorf("no %q lines found", strings.TrimSpace(rowPrefix))
	}
	// One profile's time at each size, for the several-profiles target.
	single := map[int]float64{}
	for _, x := range rows {
		if x.Profiles == 1 && x.Converged {
			single[x.Nodes] = x.ConvergeS
		}
	}
	p := func(format string, args ...any) { fmt.Fprintf(w, format+"\n", args...) }
	p("")
	p("== bench-rollout growth table ==")
	p("%7s %8s %9s %12s %10s %10s %8s %9s %12s %12s  %s",
		"nodes", "profiles", "converge", "mgr writes", "rollout/", "mgr peak", "RSS KiB", "steady B", "steady", "load before", "targets")
	p("%7s %8s %9s %12s %10s %10s %8s %9s %12s %12s", "", "", "s", "per node", "raw rate", "RSS MiB", "per node", "/node/min", "writes/n/min", "/ after")
	for _, x := range rows {
		conv := "NO"
		if x.Converged {
			conv = fmt.Sprintf("%.1f", x.ConvergeS)
		}
		p("%7d %8d %9s %12.2f %10s %10.1f %8.1f %9s %12s %12s  %s",
			x.Nodes, x.Profiles, conv, x.MgrWritesPerNode, opt(x.RateRatio, "%.2f"), x.PeakRSSMiB, x.RSSKiBPerNode,
			opt(x.SteadyBytesPNM, "%.0f"), opt(x.SteadyWritesPNM, "%.2f"), x.LoadBefore+" / "+x.LoadAfter, rowVerdicts(x, single))
	}
	p("targets (issue 13): %d nodes in one profile <= %.0fs; <= %.0f manager writes per node; <= %.0f MiB peak RSS at %d nodes; "+
		"rollout/raw write rate >= %.1f; steady <= %.0f bytes per node per minute; every size completes; "+
		"K profiles of N/K nodes within %.1fx one profile of N", targetConvergeNodes, targetConverge.Seconds(), targetWritesPerNode,
		targetRSSMiB, targetConvergeNodes, targetRawRatio, targetSteadyBytes, targetProfilesFactor)
	commits := map[string]bool{}
	for _, x := range rows {
		commits[x.Commit] = true
	}
	var cs []string
	for c := range commits {
		cs = append(cs, c)
	}
	p("commit(s): %s", strings.Join(cs, ", "))
	return nil
}

func opt(v float64, format string) string {
	if v < 0 {
		return "-"
	}
	return fmt.Sprintf(format, v)
}

// rowVerdicts lists the targets a row is measured against, each MET or MISSED.
func rowVerdicts(x row, single map[int]float64) string {
	var out []string
	add := func(name string, ok bool) { out = append(out, name+" "+verdict(ok)) }
	add("completes", x.Converged)
	if !x.Converged {
		return strings.Join(out, ", ")
	}
	if x.Nodes == targetConvergeNodes && x.Profiles == 1 {
		add("time", x.ConvergeS <= targetConverge.Seconds())
	}
	if x.Profiles > 1 {
		if one, ok := single[x.Nodes]; ok {
			add(fmt.Sprintf("vs 1 profile (%.1fs)", one), x.ConvergeS <= targetProfilesFactor*one)
		}
	}
	add("writes", x.MgrWritesPerNode <= targetWritesPerNode)
	if x.Nodes == targetConvergeNodes {
		add("RSS", x.PeakRSSMiB <= targetRSSMiB)
	}
	if x.RateRatio >= 0 {
		add("ratio", x.RateRatio >= targetRawRatio)
	}
	switch {
	case x.SteadyBytesPNM >= 0 && x.SteadyBeatShare < 0.9:
		out = append(out, fmt.Sprintf("steady UNRELIABLE (agents renewed %.0f%% of heartbeats)", 100*x.SteadyBeatShare))
	case x.SteadyBytesPNM >= 0:
		add("steady", x.SteadyBytesPNM <= targetSteadyBytes)
	}
	if x.UpgradeS >= 0 {
		add(fmt.Sprintf("upgrade %.1fs", x.UpgradeS), x.UpgradeLeftTrue == 0 && x.UpgradeS <= targetUpgradeFactor*x.ConvergeS)
	}
	return strings.Join(out, ", ")
}

// parseLevels parses -raw-workers.
func parseLevels(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return nil, fmt.Errorf("-raw-workers: %q is not a positive number", f)
		}
		out = append(out, n)
	}
	return out, nil
}

// gitCommit is the repository's commit, with "+dirty" when its tree has changes.
func gitCommit(root string) string {
	out, err := exec.Command("git", "-C", root, "rev-parse", "--short", "HEAD").Output()
	if err != nil {
		return "unknown"
	}
	c := strings.TrimSpace(string(out))
	if st, err := exec.Command("git", "-C", root, "status", "--porcelain", "--untracked-files=no").Output(); err == nil && len(st) > 0 {
		c += "+dirty"
	}
	return c
}
