// Package prometheus holds, as files, the Prometheus configuration of the
// pipeline: prometheus.yml (scrape jobs for the dispatcher and the
// callback-ingest, rule_files) and alerts.yml (what an operator must wake up
// for). Its test checks the rules with Prometheus's own rule parser, and the
// metrics they and the Grafana dashboard (../grafana/esim-pipeline.json)
// query against the /metrics of a dispatcher and an ingest running
// in-process. No program imports it.
package prometheus
