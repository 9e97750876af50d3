package main

import (
	"bytes"
	"fmt"
	"math"
	"os"
	"slices"
	"strings"
	"time"
)

// Markers around the generated part of BENCHMARKS.md; text outside them
// (the lessons written by hand) is kept when the bench writes again.
const (
	markStart = "<!-- bench:start (written by `make bench`; edit outside these markers) -->"
	markEnd   = "<!-- bench:end -->"
)

// row is one line of the summary table.
type row struct {
	measurement string
	baseline    string
	measured    string
	ratio       string
	goal        string
	met         string // yes, no, or empty when there is no goal
}

// runInfo is one process run, for the details table.
type runInfo struct {
	name string
	work string // what was done, in what time
	rate string
	// perCore is the rate per CPU second of the program measured and
	// nats-server: what the other users of the machine change least.
	perCore string
	cores   map[string]float64
	rss     string
	notes   string
}

// report is everything one bench writes.
type report struct {
	m        machine
	s        settings
	total    time.Duration
	rows     []row
	runs     []runInfo
	notes    []string // paragraphs under the details
	failures []string
	profiles []profileTop
}

type profileTop struct {
	title string
	file  string
	top   string
}

func (r *report) add(x row) { r.rows = append(r.rows, x) }

func (r *report) markdown() string {
	var b strings.Builder
	m := r.m
	fmt.Fprintf(&b, "## Results (%s)\n\n", m.date.Format("2006-01-02 15:04 MST"))
	fmt.Fprintf(&b, "Machine: %d cores (%s), %s memory, Linux %s; write+fsync of 400 bytes in the work directory %.0f µs.  \n",
		m.cores, orUnknown(m.cpuModel), orUnknown(m.memory), orUnknown(m.kernel), m.fsyncMicros)
	fmt.Fprintf(&b, "Versions: %s, %s (separate process, built from go.mod), nats.go %s; code at %s",
		m.goVersion, orUnknown(m.natsServer), orUnknown(m.natsGo), orUnknown(m.commit))
	if len(m.dirty) > 0 {
		fmt.Fprintf(&b, " plus uncommitted changes in %s", strings.Join(m.dirty, ", "))
	}
	b.WriteString(".  \n")
	fmt.Fprintf(&b, "Load average at start %s, at end %s (the 2 cores are shared with other work). Whole bench: %s.\n\n",
		m.loadStart, m.loadEnd, r.total.Round(time.Second))

	b.WriteString("| measurement | baseline | measured | ratio | goal | met? |\n")
	b.WriteString("| --- | --- | --- | --- | --- | --- |\n")
	for _, x := range r.rows {
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s |\n", x.measurement, dash(x.baseline), dash(x.measured), dash(x.ratio), dash(x.goal), dash(x.met))
	}
	if len(r.failures) > 0 {
		b.WriteString("\nNot measured in this run:\n\n")
		for _, f := range r.failures {
			fmt.Fprintf(&b, "- %s\n", f)
		}
	}
	if len(r.runs) > 0 {
		b.WriteString("\n### Runs\n\n")
		b.WriteString("Cores are CPU seconds per wall second over the measured window, per process; \"machine\" is every process on the machine, other users' included, out of " + fmt.Sprint(m.cores) + "; \"stolen\" is the part of it the hypervisor gave to other virtual machines (steal time): a run with much of it was slowed from outside.\n\n")
		b.WriteString("| run | work | rate | per CPU-second (program + nats-server) | cores used | peak RSS | notes |\n| --- | --- | --- | --- | --- | --- | --- |\n")
		for _, x := range r.runs {
			fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %s |\n", x.name, dash(x.work), dash(x.rate), dash(x.perCore), dash(formatCores(x.cores)), dash(x.rss), dash(x.notes))
		}
	}
	for _, n := range r.notes {
		b.WriteString("\n" + n + "\n")
	}
	if len(r.profiles) > 0 {
		b.WriteString("\n### CPU profiles (top functions, flat)\n")
		for _, p := range r.profiles {
			fmt.Fprintf(&b, "\n%s (`%s`):\n\n```\n%s\n```\n", p.title, p.file, strings.TrimSpace(p.top))
		}
	}
	fmt.Fprintf(&b, "\nSettings: %s.\n", r.settingsLine())
	return b.String()
}

func (r *report) settingsLine() string {
	s := r.s
	line := fmt.Sprintf("%s commands (%s under sync always), backlog %s, memory run %s, load windows %s after %s warm-up, %d connections",
		count(s.commands), count(s.syncCommands), count(s.backlog), s.memFor, s.load, s.warmup, s.conns)
	if s.dispatcherEnv != "" {
		line += "; dispatcher tried with " + s.dispatcherEnv
	}
	if s.ingestEnv != "" {
		line += "; callback-ingest tried with " + s.ingestEnv
	}
	return line
}

func formatCores(c map[string]float64) string {
	if len(c) == 0 {
		return ""
	}
	names := make([]string, 0, len(c))
	for n := range c {
		if n != machineName && n != stealName {
			names = append(names, n)
		}
	}
	slices.Sort(names)
	parts := make([]string, 0, len(names)+1)
	for _, n := range names {
		short, _, _ := strings.Cut(n, " (")
		parts = append(parts, fmt.Sprintf("%s %.2f", short, c[n]))
	}
	if v, ok := c[machineName]; ok {
		m := fmt.Sprintf("(machine %.2f busy", v)
		if st := c[stealName]; st >= 0.005 {
			m += fmt.Sprintf(", of which %.2f stolen", st)
		}
		parts = append(parts, m+")")
	}
	return strings.Join(parts, ", ")
}

// writeReport puts md between the markers of path, keeping the rest of the
// file; a file without markers gets them, with md, at the top.
func writeReport(path, md string) error {
	gen := markStart + "\n" + md + markEnd + "\n"
	old, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		return err
	}
	return os.WriteFile(path, []byte(spliceReport(old, gen)), 0o644)
}

func spliceReport(old []byte, gen string) string {
	i := bytes.Index(old, []byte(markStart))
	j := bytes.Index(old, []byte(markEnd))
	if i < 0 || j < i {
		head := "# Benchmarks\n\n`make bench` (`go run ./cmd/bench`) writes the part between the markers.\n\n"
		if len(old) == 0 {
			return head + gen
		}
		return head + gen + "\n" + string(old)
	}
	return string(old[:i]) + gen + string(old[j+len(markEnd)+1:])
}

func dash(s string) string {
	if s == "" {
		return "—"
	}
	return s
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}

// count writes n with thousands separators.
func count[T int | int64 | uint64](n T) string {
	s := fmt.Sprint(n)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var out []byte
	for i := range len(s) {
		if i > 0 && (len(s)-i)%3 == 0 {
			out = append(out, ',')
		}
		out = append(out, s[i])
	}
	if neg {
		return "-" + string(out)
	}
	return string(out)
}

func perSec(v float64) string {
	if math.IsNaN(v) || v <= 0 {
		return ""
	}
	return count(int64(math.Round(v))) + "/s"
}

func ratio(measured, baseline float64) string {
	if baseline <= 0 || measured < 0 || math.IsNaN(measured) || math.IsNaN(baseline) {
		return ""
	}
	return fmt.Sprintf("%.2f×", measured/baseline)
}

func ms(d time.Duration) string {
	if d <= 0 {
		return ""
	}
	return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond))
}

func mib(b int64) string {
	if b <= 0 {
		return ""
	}
	return fmt.Sprintf("%.0f MiB", float64(b)/(1<<20))
}

func yes(ok bool) string {
	if ok {
		return "yes"
	}
	return "**no**"
}

// perCPU is rate divided by the cores the program measured (prog) and
// nats-server used.
func perCPU(rate float64, cores map[string]float64, prog string) float64 {
	c := cores[prog] + cores["nats-server"]
	if c <= 0 || rate <= 0 {
		return 0
	}
	return rate / c
}

func perCPUText(rate float64, cores map[string]float64, prog string) string {
	v := perCPU(rate, cores, prog)
	if v <= 0 {
		return ""
	}
	return count(int64(math.Round(v)))
}

// ratios writes the throughput ratio and, when known, the ratio per CPU-second.
func ratios(measured, baseline, measuredPerCPU, baselinePerCPU float64) string {
	r := ratio(measured, baseline)
	if pc := ratio(measuredPerCPU, baselinePerCPU); r != "" && pc != "" {
		r += " (" + pc + " per CPU-s)"
	}
	return r
}
