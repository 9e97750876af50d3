// Package deploy holds the deployment files of the pipeline: the Docker
// Compose stack's NATS and load-balancer configs (nats/, nginx/), the
// JetStream stream and consumer definitions for the nats CLI (jetstream/),
// the Kubernetes manifests (kubernetes/) and the container health probe
// (healthcheck/). The repository root holds the Dockerfile and
// docker-compose.yml.
//
// It has no code. Its tests parse every file with the parsers of the tools
// that read them (compose-go, nats-server, BuildKit, the Kubernetes API
// types) and compare the JetStream definitions with the code that creates
// them; `go test ./deploy -update` rewrites the JetStream files from the code.
// Nothing may import this package.
package deploy
