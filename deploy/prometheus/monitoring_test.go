package prometheus_test

import (
	"bytes"
	"encoding/json"
	"net/http"
	"os"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"
	"github.com/stretchr/testify/require"
	"sigs.k8s.io/yaml"

	"github.com/esim-pipeline/thingspace-esim/internal/callback"
	"github.com/esim-pipeline/thingspace-esim/internal/config"
	"github.com/esim-pipeline/thingspace-esim/internal/dispatch"
	"github.com/esim-pipeline/thingspace-esim/internal/pipelinetest"
)

const (
	dashboardFile = "../grafana/esim-pipeline.json"
	rulesFile     = "alerts.yml"
	configFile    = "prometheus.yml"
)

// synthetic are series Prometheus makes itself, not a service.
var synthetic = []string{"up"}

var promql = parser.NewParser(parser.Options{})

// grafanaVars are Grafana's interval variables, replaced by a duration so
// the expression parses as PromQL.
var grafanaVars = strings.NewReplacer("$__rate_interval", "5m", "$__interval", "1m", "$__range", "1h")

// metricNames parses expr and returns the metric names it selects.
func metricNames(t *testing.T, where, expr string) []string {
	t.Helper()
	e, err := promql.ParseExpr(grafanaVars.Replace(expr))
	require.NoError(t, err, "%s: %s", where, expr)
	var names []string
	parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
		if vs, ok := n.(*parser.VectorSelector); ok {
			name := vs.Name
			for _, m := range vs.LabelMatchers {
				if m.Name == model.MetricNameLabel {
					name = m.Value
				}
			}
			require.NotEmpty(t, name, "%s: a selector without a metric name: %s", where, expr)
			names = append(names, name)
		}
		return nil
	})
	require.NotEmpty(t, names, "%s selects no metric: %s", where, expr)
	return names
}

// exposed starts a dispatcher and a callback-ingest in-process against
// embedded NATS and the simulator, pushes a little traffic (valid devices,
// an invalid one, a callback with bad credentials) so that labelled series
// exist, scrapes both /metrics and returns every series name they expose
// (histograms as _bucket, _sum and _count).
func exposed(t *testing.T) map[string]bool {
	t.Helper()
	s := pipelinetest.Start(t,
		pipelinetest.WithIngest(func(c *callback.Config) {
			c.Username, c.Password = "cb-user", config.NewSecret("cb-pass")
		}),
		pipelinetest.WithDispatcher(func(c *dispatch.Config) {
			c.BatchMaxWait = 20 * time.Millisecond
			c.CallbackUsername, c.CallbackPassword = "cb-user", config.NewSecret("cb-pass")
		}))
	nc, ingest, dispatcher := s.NC, s.Ingest.Addrs, s.Dispatcher.AdminAddr

	// Traffic: two valid devices and an invalid one.
	cmd := `{"accountName":"0000123456-00001","smsrOid":"1.3.6.1.4.1.31746.1.500.200.101.5","devices":[` +
		`{"deviceIds":[{"kind":"eid","id":"89049032000000000000000000000001"},{"kind":"iccid","id":"89148000000000000001"}]},` +
		`{"deviceIds":[{"kind":"eid","id":"89049032000000000000000000000002"},{"kind":"iccid","id":"89148000000000000002"}]},` +
		`{"deviceIds":[{"kind":"eid","id":"89049032000000000000000000000003"},{"kind":"iccid","id":"8914800000000000000X"}]}]}`
	require.NoError(t, nc.PublishMsg(&nats.Msg{Subject: "thingspace.profile.commands.enable", Data: []byte(cmd)}))
	// A callback with bad credentials, answered 401.
	resp, err := http.Post("http://"+ingest.Callback+"/callbacks", "application/json", strings.NewReader(`{"username":"x","password":"y"}`))
	require.NoError(t, err)
	_ = resp.Body.Close()
	require.Equal(t, http.StatusUnauthorized, resp.StatusCode)

	names := map[string]bool{}
	scrape := func() {
		for k := range names {
			delete(names, k)
		}
		for _, addr := range []string{dispatcher, ingest.Admin} {
			resp, err := http.Get("http://" + addr + "/metrics")
			require.NoError(t, err)
			p := expfmt.NewTextParser(model.UTF8Validation)
			fams, err := p.TextToMetricFamilies(resp.Body)
			_ = resp.Body.Close()
			require.NoError(t, err, "/metrics of %s parses", addr)
			for name, f := range fams {
				if len(f.GetMetric()) == 0 {
					continue
				}
				switch f.GetType().String() {
				case "HISTOGRAM", "GAUGE_HISTOGRAM":
					names[name+"_bucket"], names[name+"_sum"], names[name+"_count"] = true, true, true
				case "SUMMARY":
					names[name], names[name+"_sum"], names[name+"_count"] = true, true, true
				default:
					names[name] = true
				}
			}
		}
	}
	// Wait until the traffic has been through every stage: the ThingSpace
	// call, the callbacks and their events.
	require.Eventually(t, func() bool {
		scrape()
		return names["esim_ingest_events_published_total"] && names["esim_dispatcher_thingspace_calls_total"] &&
			names["esim_ingest_fanout_handled_total"] && names["esim_dispatcher_commands_total"]
	}, 30*time.Second, 50*time.Millisecond, "traffic reached every stage")
	return names
}

type dashboard struct {
	UID        string  `json:"uid"`
	Title      string  `json:"title"`
	Panels     []panel `json:"panels"`
	Templating struct {
		List []struct {
			Name, Type, Query string
		} `json:"list"`
	} `json:"templating"`
}

type panel struct {
	ID         int    `json:"id"`
	Type       string `json:"type"`
	Title      string `json:"title"`
	Datasource *struct {
		Type, UID string
	} `json:"datasource"`
	GridPos struct{ H, W, X, Y int } `json:"gridPos"`
	Targets []struct {
		RefID string `json:"refId"`
		Expr  string `json:"expr"`
	} `json:"targets"`
}

func readDashboard(t *testing.T) dashboard {
	t.Helper()
	b, err := os.ReadFile(dashboardFile)
	require.NoError(t, err)
	var d dashboard
	dec := json.NewDecoder(bytes.NewReader(b))
	require.NoError(t, dec.Decode(&d))
	return d
}

func readRules(t *testing.T) *rulefmt.RuleGroups {
	t.Helper()
	groups, errs := rulefmt.ParseFile(rulesFile, false, model.UTF8Validation, promql, nil)
	require.Empty(t, errs, "Prometheus's rule parser accepts %s", rulesFile)
	require.NotNil(t, groups)
	return groups
}

func TestTheDashboardIsWellFormed(t *testing.T) {
	d := readDashboard(t)
	require.Equal(t, "esim-pipeline", d.UID)
	require.True(t, slices.ContainsFunc(d.Templating.List, func(v struct{ Name, Type, Query string }) bool {
		return v.Name == "datasource" && v.Type == "datasource" && v.Query == "prometheus"
	}), "a Prometheus data source variable")
	ids := map[int]bool{}
	queried := map[string]bool{}
	graphs := 0
	for _, p := range d.Panels {
		require.False(t, ids[p.ID], "panel id %d repeats", p.ID)
		ids[p.ID] = true
		require.LessOrEqual(t, p.GridPos.X+p.GridPos.W, 24, "panel %q fits the grid", p.Title)
		if p.Type == "row" {
			continue
		}
		graphs++
		require.NotNil(t, p.Datasource, "panel %q names its data source", p.Title)
		require.Equal(t, "${datasource}", p.Datasource.UID, "panel %q uses the data source variable", p.Title)
		require.NotEmpty(t, p.Targets, "panel %q queries something", p.Title)
		for _, tg := range p.Targets {
			for _, n := range metricNames(t, "panel "+p.Title, tg.Expr) {
				queried[n] = true
			}
			if strings.Contains(tg.Expr, `status="timed_out"`) {
				queried["timed_out"] = true
			}
		}
	}
	require.GreaterOrEqual(t, graphs, 10)
	// What the operator asked to see.
	for _, want := range []string{
		"esim_dispatcher_commands_total",                 // commands in
		"esim_dispatcher_devices_total",                  // devices by status
		"esim_dispatcher_batch_devices_bucket",           // batch sizes
		"esim_dispatcher_thingspace_call_seconds_bucket", // ThingSpace latency
		"esim_dispatcher_thingspace_calls_total",         // answers 2xx/4xx/429/5xx
		"esim_dispatcher_retries_total",                  // retries
		"esim_dispatcher_consumer_pending",               // consumer lag
		"esim_ingest_callbacks_total",                    // callbacks by answer code
		"esim_ingest_events_published_total",             // events out
		"timed_out",                                      // timed_out devices
	} {
		require.True(t, queried[want], "the dashboard shows %s", want)
	}
}

func TestTheAlertRulesAreWhatAnOperatorWakesUpFor(t *testing.T) {
	groups := readRules(t)
	byName := map[string]rulefmt.Rule{}
	for _, g := range groups.Groups {
		for _, r := range g.Rules {
			require.NotEmpty(t, r.Alert, "group %s: only alerts here", g.Name)
			require.NotContains(t, byName, r.Alert, "alert %s repeats", r.Alert)
			byName[r.Alert] = r
			require.Contains(t, []string{"page", "ticket"}, r.Labels["severity"], "%s: severity page or ticket", r.Alert)
			require.NotEmpty(t, r.Annotations["summary"], "%s: a summary", r.Alert)
			require.NotEmpty(t, r.Annotations["description"], "%s: a description", r.Alert)
		}
	}
	uses := func(alert, metric, matcher string) {
		t.Helper()
		r, ok := byName[alert]
		require.True(t, ok, "an alert %s", alert)
		require.Contains(t, metricNames(t, alert, r.Expr), metric, alert)
		require.Contains(t, r.Expr, matcher, alert)
	}
	uses("EsimCallbacksAnswered503", "esim_ingest_callbacks_total", `code="503"`)
	uses("EsimCallbackAuthenticationFailing", "esim_ingest_callbacks_total", `code="401"`)
	uses("EsimDispatcherLagGrowing", "esim_dispatcher_consumer_pending", "deriv(")
	uses("EsimFanoutLagGrowing", "esim_ingest_fanout_pending_messages", "deriv(")
	uses("EsimThingSpaceThrottling", "esim_dispatcher_thingspace_calls_total", `code="429"`)
	uses("EsimThingSpaceErrors", "esim_dispatcher_thingspace_calls_total", `code=~"5xx|error"`)
	uses("EsimThingSpaceAuthenticationFailing", "esim_dispatcher_thingspace_calls_total", `code=~"401|403"`)
	uses("EsimDevicesTimedOut", "esim_dispatcher_devices_total", `status="timed_out"`)
	uses("EsimDeadLettersArriving", "esim_ingest_deadletter_messages", "by (subject)")
	uses("EsimDeadLettersPiledUp", "esim_ingest_deadletter_messages", "by (subject)")
	require.Equal(t, "page", byName["EsimCallbacksAnswered503"].Labels["severity"], "a callback refused four times is lost: page")
}

func TestThePrometheusConfigLoadsTheRulesAndScrapesBothServices(t *testing.T) {
	b, err := os.ReadFile(configFile)
	require.NoError(t, err)
	var cfg struct {
		RuleFiles     []string `json:"rule_files"`
		ScrapeConfigs []struct {
			JobName string `json:"job_name"`
		} `json:"scrape_configs"`
	}
	require.NoError(t, yaml.Unmarshal(b, &cfg), configFile)
	require.Equal(t, []string{rulesFile}, cfg.RuleFiles)
	var jobs []string
	for _, s := range cfg.ScrapeConfigs {
		jobs = append(jobs, s.JobName)
	}
	sort.Strings(jobs)
	require.Equal(t, []string{"esim-callback-ingest", "esim-dispatcher"}, jobs, "the jobs EsimServiceDown names")
	require.Contains(t, readRulesExpr(t, "EsimServiceDown"), `job=~"esim-dispatcher|esim-callback-ingest"`)
}

func readRulesExpr(t *testing.T, alert string) string {
	t.Helper()
	for _, g := range readRules(t).Groups {
		for _, r := range g.Rules {
			if r.Alert == alert {
				return r.Expr
			}
		}
	}
	t.Fatalf("no alert %s", alert)
	return ""
}

// Every metric the dashboard and the alerts query is on a running
// service's /metrics.
func TestEveryQueriedMetricIsExposedByTheServices(t *testing.T) {
	if testing.Short() {
		t.Skip("starts the services")
	}
	names := exposed(t)
	check := func(where, expr string) {
		t.Helper()
		for _, n := range metricNames(t, where, expr) {
			if slices.Contains(synthetic, n) {
				continue
			}
			require.True(t, names[n], "%s queries %s, which no service exposes (they expose: %s)", where, n, strings.Join(sorted(names), ", "))
		}
	}
	for _, p := range readDashboard(t).Panels {
		for _, tg := range p.Targets {
			check("dashboard panel "+p.Title, tg.Expr)
		}
	}
	for _, g := range readRules(t).Groups {
		for _, r := range g.Rules {
			check("alert "+r.Alert, r.Expr)
		}
	}
}

func sorted(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
