package deploy_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	cmv1 "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
	"github.com/moby/patternmatcher"
	"github.com/moby/patternmatcher/ignorefile"
	"github.com/stretchr/testify/require"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8syaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"

	"github.com/esim-pipeline/thingspace-esim/internal/callback"
	"github.com/esim-pipeline/thingspace-esim/internal/config"
	"github.com/esim-pipeline/thingspace-esim/internal/dispatch"
)

// root is the repository root; tests run in deploy/.
const root = ".."

// program is the configuration of one of the pipeline's programs, read the
// way the program reads it.
type program struct {
	names []string // every variable the program declares
	// check parses env as the program does and validates the result.
	check func(env map[string]string) error
}

func dispatcherProgram() program {
	var cfg dispatch.Config
	set := config.NewSet("dispatcher", io.Discard)
	cfg.Declare(set)
	return program{names: set.Names(), check: func(env map[string]string) error {
		var cfg dispatch.Config
		set := config.NewSet("dispatcher", io.Discard)
		cfg.Declare(set)
		if err := set.Parse(nil, mapEnv(env)); err != nil {
			return err
		}
		return cfg.Validate()
	}}
}

func callbackProgram() program {
	var cfg callback.Config
	set := config.NewSet("callback-ingest", io.Discard)
	cfg.Declare(set)
	return program{names: set.Names(), check: func(env map[string]string) error {
		var cfg callback.Config
		set := config.NewSet("callback-ingest", io.Discard)
		cfg.Declare(set)
		if err := set.Parse(nil, mapEnv(env)); err != nil {
			return err
		}
		return cfg.Validate()
	}}
}

func mapEnv(env map[string]string) func(string) string {
	return func(k string) string { return env[k] }
}

// unknownVariables lists the names in env that p does not declare.
func unknownVariables(p program, env map[string]string, allowed ...string) []string {
	var out []string
	for k := range env {
		if !slices.Contains(p.names, k) && !slices.Contains(allowed, k) {
			out = append(out, k)
		}
	}
	slices.Sort(out)
	return out
}

// natsURLs splits a NATS_URL list into its host:port parts.
func natsURLs(t *testing.T, list string) []string {
	t.Helper()
	var hosts []string
	for _, u := range strings.Split(list, ",") {
		p, err := url.Parse(strings.TrimSpace(u))
		require.NoError(t, err, "NATS_URL %q", list)
		require.Equal(t, "nats", p.Scheme, "NATS_URL %q", list)
		hosts = append(hosts, p.Host)
	}
	return hosts
}

// ---------------------------------------------------------------- compose

func loadCompose(t *testing.T) *types.Project {
	t.Helper()
	opts, err := cli.NewProjectOptions([]string{filepath.Join(root, "docker-compose.yml")},
		cli.WithWorkingDirectory(root),
		cli.WithInterpolation(true),
		cli.WithNormalization(true),
		cli.WithConsistency(true),
		cli.WithResolvedPaths(true),
	)
	require.NoError(t, err)
	project, err := opts.LoadProject(context.Background())
	require.NoError(t, err, "docker-compose.yml does not load with compose-go's validation")
	return project
}

func composeEnv(svc types.ServiceConfig) map[string]string {
	env := map[string]string{}
	for k, v := range svc.Environment {
		if v != nil {
			env[k] = *v
		}
	}
	return env
}

func servicesWithPrefix(p *types.Project, prefix string) []types.ServiceConfig {
	var out []types.ServiceConfig
	for _, name := range p.ServiceNames() {
		if strings.HasPrefix(name, prefix) {
			out = append(out, p.Services[name])
		}
	}
	return out
}

func TestComposeStack(t *testing.T) {
	p := loadCompose(t)

	t.Run("three NATS servers, each with its own JetStream config, fsync always and three routes", func(t *testing.T) {
		nats := servicesWithPrefix(p, "nats-")
		require.Len(t, nats, 3)
		names := map[string]bool{}
		for _, svc := range nats {
			require.True(t, strings.HasPrefix(svc.Image, "nats:2.12"), "%s image %q", svc.Name, svc.Image)
			var conf string
			mounted := map[string]string{} // target -> source
			for _, v := range svc.Volumes {
				if v.Type != types.VolumeTypeBind {
					continue
				}
				require.True(t, v.ReadOnly, "%s mounts %s read-only", svc.Name, v.Source)
				mounted[v.Target] = v.Source
				if strings.Contains(strings.Join(svc.Command, " "), v.Target) {
					conf = v.Source
				}
			}
			require.NotEmpty(t, conf, "%s mounts a config from deploy/nats and runs with it", svc.Name)
			for _, f := range []string{"accounts.conf", "permissions.conf"} {
				require.Equal(t, filepath.Join(filepath.Dir(conf), f), mounted["/etc/nats/"+f], "%s mounts %s beside its config", svc.Name, f)
			}
			require.Equal(t, devCertDir(t), mounted["/etc/nats/certs"], "%s mounts the dev certificates", svc.Name)
			for k := range natsPasswords {
				require.Contains(t, svc.Environment, k, "%s reads %s for accounts.conf", svc.Name, k)
			}
			opts := processNATSConf(t, conf)
			require.True(t, opts.JetStream, "%s: JetStream on", conf)
			require.True(t, opts.SyncAlways, "%s: sync_interval always", conf)
			require.Len(t, opts.Routes, 3, conf)
			require.Equal(t, svc.Name, opts.ServerName, "%s is the config of %s", conf, svc.Name)
			names[opts.ServerName] = true
			var data bool
			for _, v := range svc.Volumes {
				if v.Type == types.VolumeTypeVolume && (v.Target == filepath.Dir(opts.StoreDir) || v.Target == opts.StoreDir) {
					data = true
				}
			}
			require.True(t, data, "%s keeps %s on a named volume", svc.Name, opts.StoreDir)
			require.NotNil(t, svc.HealthCheck, svc.Name)
			require.Contains(t, strings.Join(svc.HealthCheck.Test, " "), ":8222/healthz", svc.Name)
		}
		require.Len(t, names, 3, "server names are unique")
	})

	dispatcher, ingest := dispatcherProgram(), callbackProgram()

	t.Run("two dispatchers configured through the contract's variables", func(t *testing.T) {
		ds := servicesWithPrefix(p, "dispatcher-")
		require.Len(t, ds, 2)
		sim, ok := p.Services["thingspace-sim"]
		require.True(t, ok, "the simulator runs in the stack")
		simEnv := composeEnv(sim)
		for _, svc := range ds {
			env := composeEnv(svc)
			require.Empty(t, unknownVariables(dispatcher, env), "%s sets variables the dispatcher does not read", svc.Name)
			require.Len(t, natsURLs(t, env["NATS_URL"]), 3, "%s NATS_URL lists the cluster", svc.Name)
			require.ElementsMatch(t, []string{"nats-1:4222", "nats-2:4222", "nats-3:4222"}, natsURLs(t, env["NATS_URL"]))
			requireNATSClient(t, p, svc, env, "dispatcher")
			require.Equal(t, "3", env["STREAM_REPLICAS"], svc.Name)
			require.Equal(t, "http://thingspace-sim:8090", env["THINGSPACE_BASE_URL"], svc.Name)
			for _, k := range []string{"THINGSPACE_CLIENT_ID", "THINGSPACE_CLIENT_SECRET", "THINGSPACE_USERNAME", "THINGSPACE_PASSWORD"} {
				require.NotEmpty(t, env[k], "%s %s", svc.Name, k)
				require.Equal(t, simEnv[k], env[k], "%s and the simulator share %s", svc.Name, k)
			}
			cb, err := url.Parse(env["CALLBACK_URL"])
			require.NoError(t, err)
			require.Equal(t, "/callbacks", cb.Path, "%s CALLBACK_URL", svc.Name)
			_, isLB := p.Services[cb.Hostname()]
			require.True(t, isLB, "%s CALLBACK_URL names a service of the stack", svc.Name)
			require.False(t, strings.HasPrefix(cb.Hostname(), "callback-ingest"), "%s CALLBACK_URL is the load balancer, not one ingest", svc.Name)
			require.NotEmpty(t, env["CALLBACK_USERNAME"], svc.Name)
			require.NotEmpty(t, env["CALLBACK_PASSWORD"], svc.Name)
			require.NotEmpty(t, env["METRICS_ADDR"], svc.Name)
			require.NoError(t, dispatcher.check(env), "%s: the dispatcher refuses its environment", svc.Name)
			requireAppService(t, p, svc, env["METRICS_ADDR"])
			require.Contains(t, svc.DependsOn, "thingspace-sim", svc.Name)
		}
	})

	t.Run("two callback-ingests behind one published port", func(t *testing.T) {
		ins := servicesWithPrefix(p, "callback-ingest-")
		require.Len(t, ins, 2)
		var published []string
		for _, name := range p.ServiceNames() {
			for _, port := range p.Services[name].Ports {
				if port.Published != "" && !strings.HasPrefix(name, "nats-") {
					published = append(published, name)
				}
			}
		}
		require.Len(t, published, 1, "one published port for callbacks, the NATS client port aside: %v", published)
		lb := p.Services[published[0]]
		// The balancer's config names both ingests' callback listener.
		var conf string
		for _, v := range lb.Volumes {
			if v.Type == types.VolumeTypeBind && strings.HasSuffix(v.Source, ".conf") {
				conf = v.Source
			}
		}
		require.NotEmpty(t, conf, "%s mounts its config", lb.Name)
		b, err := os.ReadFile(conf)
		require.NoError(t, err)
		for _, svc := range ins {
			env := composeEnv(svc)
			require.Empty(t, unknownVariables(ingest, env), "%s sets variables callback-ingest does not read", svc.Name)
			require.Empty(t, svc.Ports, "%s publishes nothing itself", svc.Name)
			require.ElementsMatch(t, []string{"nats-1:4222", "nats-2:4222", "nats-3:4222"}, natsURLs(t, env["NATS_URL"]))
			requireNATSClient(t, p, svc, env, "callback-ingest")
			require.Equal(t, "/etc/pipeline/certs/callback-ingest-https.pem", env["TLS_CERT_FILE"], "%s serves HTTPS", svc.Name)
			require.Equal(t, "/etc/pipeline/certs/callback-ingest-https-key.pem", env["TLS_KEY_FILE"], svc.Name)
			require.Equal(t, "3", env["STREAM_REPLICAS"], svc.Name)
			require.NotEmpty(t, env["CALLBACK_USERNAME"], svc.Name)
			require.NotEmpty(t, env["CALLBACK_PASSWORD"], svc.Name)
			require.NoError(t, ingest.check(env), "%s: callback-ingest refuses its environment", svc.Name)
			_, listenPort, err := splitAddr(env["LISTEN_ADDR"])
			require.NoError(t, err)
			_, adminPort, err := splitAddr(env["METRICS_ADDR"])
			require.NoError(t, err)
			require.Contains(t, string(b), svc.Name+":"+listenPort, "%s balances %s's callback listener", conf, svc.Name)
			require.NotContains(t, string(b), svc.Name+":"+adminPort, "%s never exposes the admin listener", conf)
			requireAppService(t, p, svc, env["METRICS_ADDR"])
			require.Contains(t, lb.DependsOn, svc.Name)
			require.Equal(t, env["CALLBACK_USERNAME"], composeEnv(p.Services["dispatcher-1"])["CALLBACK_USERNAME"])
			require.Equal(t, env["CALLBACK_PASSWORD"], composeEnv(p.Services["dispatcher-1"])["CALLBACK_PASSWORD"])
		}
		require.Equal(t, lb.Name, hostOf(t, composeEnv(p.Services["dispatcher-1"])["CALLBACK_URL"]), "dispatchers register the balancer")
		cb, err := url.Parse(composeEnv(p.Services["dispatcher-1"])["CALLBACK_URL"])
		require.NoError(t, err)
		require.Equal(t, "https", cb.Scheme, "callbacks are registered on HTTPS")
		require.Len(t, lb.Ports, 1)
		require.Equal(t, cb.Port(), lb.Ports[0].Published, "the published port is the registered one")
		require.Equal(t, cb.Port(), fmt.Sprint(lb.Ports[0].Target))
		requireNginxTLS(t, string(b), cb.Port())
		require.NotNil(t, lb.HealthCheck)
	})

	t.Run("the simulator listens on all interfaces inside the stack", func(t *testing.T) {
		sim := p.Services["thingspace-sim"]
		env := composeEnv(sim)
		require.Equal(t, "0.0.0.0:8090", env["LISTEN_ADDR"])
		require.Equal(t, []string{"/usr/local/bin/thingspace-sim"}, []string(sim.Entrypoint))
		require.NotNil(t, sim.HealthCheck)
		require.Contains(t, strings.Join(sim.HealthCheck.Test, " "), "127.0.0.1:8090/")
	})
}

// requireAppService checks what every service built from the Dockerfile
// shares: the image, a /healthz check on its admin port, NATS first.
func requireAppService(t *testing.T, p *types.Project, svc types.ServiceConfig, adminAddr string) {
	t.Helper()
	require.NotNil(t, svc.Build, "%s is built from the Dockerfile", svc.Name)
	require.True(t, svc.ReadOnly, "%s has a read-only root file system", svc.Name)
	require.NotNil(t, svc.HealthCheck, svc.Name)
	_, port, err := splitAddr(adminAddr)
	require.NoError(t, err)
	require.Equal(t, []string{"CMD", "/usr/local/bin/healthcheck", "http://127.0.0.1:" + port + "/healthz"}, []string(svc.HealthCheck.Test), svc.Name)
	for _, n := range []string{"nats-1", "nats-2", "nats-3"} {
		dep, ok := svc.DependsOn[n]
		require.True(t, ok, "%s depends on %s", svc.Name, n)
		require.Equal(t, types.ServiceConditionHealthy, dep.Condition, "%s waits for %s to be healthy", svc.Name, n)
	}
	require.NotNil(t, svc.StopGracePeriod, "%s gets time to finish its work on SIGTERM", svc.Name)
}

func splitAddr(addr string) (host, port string, err error) {
	i := strings.LastIndex(addr, ":")
	if i < 0 {
		return "", "", fmt.Errorf("%q has no port", addr)
	}
	return addr[:i], addr[i+1:], nil
}

func hostOf(t *testing.T, raw string) string {
	t.Helper()
	u, err := url.Parse(raw)
	require.NoError(t, err)
	return u.Hostname()
}

// ---------------------------------------------------------------- nats

func TestNATSConfigs(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("nats", "nats-*.conf"))
	require.NoError(t, err)
	require.Len(t, files, 3)
	names := map[string]bool{}
	for _, f := range files {
		opts := processNATSConf(t, f)
		require.True(t, opts.JetStream, "%s: jetstream on", f)
		require.True(t, opts.SyncAlways, "%s: sync_interval always", f)
		require.NotEmpty(t, opts.StoreDir, "%s: a store dir", f)
		require.Equal(t, 8222, opts.HTTPPort, "%s: monitoring port", f)
		require.Equal(t, 4222, opts.Port, f)
		require.Equal(t, 6222, opts.Cluster.Port, f)
		require.NotEmpty(t, opts.Cluster.Name, f)
		require.Len(t, opts.Routes, 3, "%s: routes to the three servers", f)
		var routes []string
		for _, r := range opts.Routes {
			routes = append(routes, r.Host)
		}
		require.ElementsMatch(t, []string{"nats-1:6222", "nats-2:6222", "nats-3:6222"}, routes, f)
		require.GreaterOrEqual(t, opts.MaxPayload, int32(1<<20+64<<10), "%s: a 1 MiB callback and its headers fit in one message", f)
		names[opts.ServerName] = true
	}
	require.Len(t, names, 3, "each server has its own name")
}

// ---------------------------------------------------------------- Dockerfile

type stage struct {
	from, name string
	nodes      []*parser.Node
}

func args(n *parser.Node) []string {
	var out []string
	for a := n.Next; a != nil; a = a.Next {
		out = append(out, a.Value)
	}
	return out
}

func TestDockerfile(t *testing.T) {
	f, err := os.Open(filepath.Join(root, "Dockerfile"))
	require.NoError(t, err)
	defer f.Close()
	res, err := parser.Parse(f)
	require.NoError(t, err)

	var stages []*stage
	for _, n := range res.AST.Children {
		if strings.EqualFold(n.Value, "from") {
			a := args(n)
			st := &stage{from: a[0]}
			if len(a) == 3 && strings.EqualFold(a[1], "as") {
				st.name = a[2]
			}
			stages = append(stages, st)
			continue
		}
		require.NotEmpty(t, stages, "%s before FROM", n.Original)
		stages[len(stages)-1].nodes = append(stages[len(stages)-1].nodes, n)
	}
	require.GreaterOrEqual(t, len(stages), 2, "multi-stage")
	build, final := stages[0], stages[len(stages)-1]

	require.Equal(t, "golang:1.26", build.from)
	require.NotEmpty(t, build.name)
	var buildCmd string
	for _, n := range build.nodes {
		if strings.EqualFold(n.Value, "run") && strings.Contains(n.Original, "go build") {
			buildCmd = n.Original
		}
	}
	require.NotEmpty(t, buildCmd, "the build stage runs go build")
	for _, want := range []string{"CGO_ENABLED=0", "-trimpath", `-ldflags "-s -w"`, "./cmd/dispatcher", "./cmd/callback-ingest", "./cmd/thingspace-sim", "./deploy/healthcheck"} {
		require.Contains(t, buildCmd, want)
	}

	require.True(t, final.from == "scratch" || strings.HasPrefix(final.from, "gcr.io/distroless/static"), "final image %q is minimal", final.from)
	var user string
	var copied []string
	for _, n := range final.nodes {
		switch strings.ToLower(n.Value) {
		case "user":
			user = args(n)[0]
		case "copy":
			require.Contains(t, n.Flags, "--from="+build.name, "the final stage copies from the build stage only: %s", n.Original)
			a := args(n)
			for _, src := range a[:len(a)-1] {
				copied = append(copied, filepath.Base(src))
			}
		case "run":
			t.Fatalf("the final stage runs nothing (no shell in it): %s", n.Original)
		}
	}
	require.NotEmpty(t, user, "the final stage sets USER")
	uid := strings.Split(user, ":")[0]
	require.NotContains(t, []string{"root", "0"}, uid, "the final stage must not run as root (USER %s)", user)
	require.ElementsMatch(t, []string{"dispatcher", "callback-ingest", "thingspace-sim", "healthcheck"}, copied)
}

func TestDockerignore(t *testing.T) {
	f, err := os.Open(filepath.Join(root, ".dockerignore"))
	require.NoError(t, err)
	defer f.Close()
	patterns, err := ignorefile.ReadAll(f)
	require.NoError(t, err)
	pm, err := patternmatcher.New(patterns)
	require.NoError(t, err)
	for _, p := range []string{"go.mod", "go.sum", "cmd/dispatcher/main.go", "internal/broker/streams.go", "schemas/schemas.go", "deploy/healthcheck/main.go"} {
		ignored, err := pm.MatchesOrParentMatches(p)
		require.NoError(t, err)
		require.False(t, ignored, "%s is needed by the build", p)
	}
	for _, p := range []string{".git/HEAD", "command.test", "internal/dispatch/dispatch.test", "deploy/kubernetes/dispatcher.yaml"} {
		ignored, err := pm.MatchesOrParentMatches(p)
		require.NoError(t, err)
		require.True(t, ignored, "%s stays out of the build context", p)
	}
}

// ---------------------------------------------------------------- Kubernetes

type manifests struct {
	deployments map[string]*appsv1.Deployment
	services    map[string]*corev1.Service
	configMaps  map[string]*corev1.ConfigMap
	secrets     map[string]*corev1.Secret
	pdbs        map[string]*policyv1.PodDisruptionBudget
	namespaces  map[string]*corev1.Namespace
	ingresses   map[string]*networkingv1.Ingress
	certs       map[string]*cmv1.Certificate // by secret name
	issuers     map[string]*cmv1.ClusterIssuer
	files       map[string]bool // files holding at least one object
}

// decode fills into from one YAML document, refusing unknown fields and
// duplicate keys.
func decode(t *testing.T, file string, doc []byte, into any) {
	t.Helper()
	require.NoError(t, yaml.UnmarshalStrict(doc, into), "%s does not decode strictly into %T", file, into)
}

func loadManifests(t *testing.T) manifests {
	t.Helper()
	return loadManifestsIn(t, "kubernetes")
}

// loadManifestsIn decodes every object of dir's *.yaml files but its
// kustomization.
func loadManifestsIn(t *testing.T, dir string) manifests {
	t.Helper()
	m := manifests{
		deployments: map[string]*appsv1.Deployment{}, services: map[string]*corev1.Service{},
		configMaps: map[string]*corev1.ConfigMap{}, secrets: map[string]*corev1.Secret{},
		pdbs: map[string]*policyv1.PodDisruptionBudget{}, namespaces: map[string]*corev1.Namespace{},
		ingresses: map[string]*networkingv1.Ingress{}, certs: map[string]*cmv1.Certificate{},
		issuers: map[string]*cmv1.ClusterIssuer{},
		files:   map[string]bool{},
	}
	files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	require.NoError(t, err)
	require.NotEmpty(t, files)
	for _, file := range files {
		if filepath.Base(file) == "kustomization.yaml" {
			continue
		}
		b, err := os.ReadFile(file)
		require.NoError(t, err)
		r := k8syaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(b)))
		for {
			doc, err := r.Read()
			if errors.Is(err, io.EOF) {
				break
			}
			require.NoError(t, err, file)
			if len(bytes.TrimSpace(stripComments(doc))) == 0 {
				continue
			}
			var tm metav1.TypeMeta
			require.NoError(t, yaml.Unmarshal(doc, &tm), file)
			m.files[filepath.Base(file)] = true
			key := tm.APIVersion + " " + tm.Kind
			switch key {
			case "apps/v1 Deployment":
				var d appsv1.Deployment
				decode(t, file, doc, &d)
				m.deployments[d.Name] = &d
			case "v1 Service":
				var s corev1.Service
				decode(t, file, doc, &s)
				m.services[s.Name] = &s
			case "v1 ConfigMap":
				var c corev1.ConfigMap
				decode(t, file, doc, &c)
				m.configMaps[c.Name] = &c
			case "v1 Secret":
				var s corev1.Secret
				decode(t, file, doc, &s)
				m.secrets[s.Name] = &s
			case "policy/v1 PodDisruptionBudget":
				var p policyv1.PodDisruptionBudget
				decode(t, file, doc, &p)
				m.pdbs[p.Name] = &p
			case "v1 Namespace":
				var n corev1.Namespace
				decode(t, file, doc, &n)
				m.namespaces[n.Name] = &n
			case "networking.k8s.io/v1 Ingress":
				var in networkingv1.Ingress
				decode(t, file, doc, &in)
				m.ingresses[in.Name] = &in
			case "cert-manager.io/v1 Certificate":
				var c cmv1.Certificate
				decode(t, file, doc, &c)
				require.NotContains(t, m.certs, c.Spec.SecretName, "%s: two Certificates keep Secret %s", file, c.Spec.SecretName)
				m.certs[c.Spec.SecretName] = &c
			case "cert-manager.io/v1 ClusterIssuer":
				var ci cmv1.ClusterIssuer
				decode(t, file, doc, &ci)
				m.issuers[ci.Name] = &ci
			default:
				t.Fatalf("%s: unexpected object %s", file, key)
			}
		}
	}
	return m
}

func stripComments(doc []byte) []byte {
	var out []byte
	for _, line := range bytes.Split(doc, []byte("\n")) {
		if !bytes.HasPrefix(bytes.TrimSpace(line), []byte("#")) {
			out = append(out, line...)
			out = append(out, '\n')
		}
	}
	return out
}

// containerEnv resolves what the container sees: the ConfigMaps of envFrom,
// then env, secrets as their example values. It also returns the
// variables taken from a Secret.
func containerEnv(t *testing.T, m manifests, c corev1.Container) (env map[string]string, fromSecret []string) {
	t.Helper()
	env = map[string]string{}
	for _, ef := range c.EnvFrom {
		require.NotNil(t, ef.ConfigMapRef, "%s: envFrom only ConfigMaps; secrets one by one", c.Name)
		cm, ok := m.configMaps[ef.ConfigMapRef.Name]
		require.True(t, ok, "%s: ConfigMap %s exists", c.Name, ef.ConfigMapRef.Name)
		for k, v := range cm.Data {
			env[k] = v
		}
	}
	for _, e := range c.Env {
		switch {
		case e.ValueFrom == nil:
			// The kubelet expands $(VAR) of variables defined before.
			env[e.Name] = dependentVar.ReplaceAllStringFunc(e.Value, func(ref string) string {
				if v, ok := env[ref[2:len(ref)-1]]; ok {
					return v
				}
				return ref
			})
		case e.ValueFrom.SecretKeyRef != nil:
			ref := e.ValueFrom.SecretKeyRef
			s, ok := m.secrets[ref.Name]
			require.True(t, ok, "%s: %s comes from Secret %s, which the example shows", c.Name, e.Name, ref.Name)
			v, ok := s.StringData[ref.Key]
			require.True(t, ok, "%s: Secret %s has key %s", c.Name, ref.Name, ref.Key)
			env[e.Name] = v
			fromSecret = append(fromSecret, e.Name)
		case e.ValueFrom.ResourceFieldRef != nil:
			env[e.Name] = "1"
		default:
			t.Fatalf("%s: %s has an unexpected source", c.Name, e.Name)
		}
	}
	return env, fromSecret
}

var dependentVar = regexp.MustCompile(`\$\([A-Za-z_][A-Za-z0-9_]*\)`)

func TestKubernetesManifests(t *testing.T) {
	m := loadManifests(t)

	programs := map[string]struct {
		p       program
		secrets []string
	}{
		"dispatcher":      {dispatcherProgram(), []string{"THINGSPACE_CLIENT_SECRET", "THINGSPACE_PASSWORD", "CALLBACK_PASSWORD", "NATS_PASSWORD"}},
		"callback-ingest": {callbackProgram(), []string{"CALLBACK_PASSWORD", "NATS_PASSWORD"}},
	}
	require.Len(t, m.deployments, len(programs), "the two services, and no simulator")
	for name, want := range programs {
		t.Run(name, func(t *testing.T) {
			d, ok := m.deployments[name]
			require.True(t, ok, "Deployment %s", name)
			require.NotNil(t, d.Spec.Replicas)
			require.EqualValues(t, 2, *d.Spec.Replicas)
			pod := d.Spec.Template.Spec
			require.Equal(t, d.Spec.Selector.MatchLabels, subset(d.Spec.Template.Labels, d.Spec.Selector.MatchLabels), "the selector matches the pods")
			require.NotNil(t, pod.SecurityContext)
			require.NotNil(t, pod.SecurityContext.RunAsNonRoot)
			require.True(t, *pod.SecurityContext.RunAsNonRoot)
			require.NotNil(t, pod.SecurityContext.RunAsUser)
			require.NotZero(t, *pod.SecurityContext.RunAsUser)
			require.NotNil(t, pod.TerminationGracePeriodSeconds)
			require.GreaterOrEqual(t, *pod.TerminationGracePeriodSeconds, int64(30), "time to finish in-flight work")
			require.Len(t, pod.Containers, 1)
			c := pod.Containers[0]
			require.Equal(t, []string{"/usr/local/bin/" + name}, c.Command)

			sc := c.SecurityContext
			require.NotNil(t, sc)
			require.NotNil(t, sc.ReadOnlyRootFilesystem)
			require.True(t, *sc.ReadOnlyRootFilesystem)
			require.NotNil(t, sc.AllowPrivilegeEscalation)
			require.False(t, *sc.AllowPrivilegeEscalation)
			require.NotNil(t, sc.Capabilities)
			require.Contains(t, sc.Capabilities.Drop, corev1.Capability("ALL"))

			for _, r := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
				req, lim := c.Resources.Requests[r], c.Resources.Limits[r]
				require.False(t, req.IsZero(), "%s request", r)
				require.False(t, lim.IsZero(), "%s limit", r)
				require.LessOrEqual(t, req.Cmp(lim), 0, "%s request within the limit", r)
			}

			env, fromSecret := containerEnv(t, m, c)
			require.ElementsMatch(t, want.secrets, fromSecret, "the secrets come from a Secret")
			for _, s := range want.secrets {
				for _, cm := range m.configMaps {
					require.NotContains(t, cm.Data, s, "ConfigMap %s holds secret %s", cm.Name, s)
				}
			}
			require.Empty(t, unknownVariables(want.p, env, "GOMEMLIMIT",
				// Put into NATS_URL by the kubelet ($(NATS_PASSWORD)).
				"NATS_PASSWORD",
				// The shared ConfigMap serves both services.
				"THINGSPACE_BASE_URL", "THINGSPACE_CLIENT_ID", "THINGSPACE_USERNAME", "THINGSPACE_RATE",
				"BATCH_MAX_DEVICES", "BATCH_MAX_WAIT", "STATUS_BATCH_MAX", "CALLBACK_DEADLINE", "CALLBACK_URL"),
				"variables %s does not read", name)
			require.Len(t, natsURLs(t, env["NATS_URL"]), 3, "NATS_URL lists the cluster")
			require.Equal(t, "3", env["STREAM_REPLICAS"])
			require.NoError(t, want.p.check(env), "%s refuses its environment", name)

			// Probes on the admin listener, METRICS_ADDR.
			_, adminPort, err := splitAddr(env["METRICS_ADDR"])
			require.NoError(t, err)
			ports := map[string]int32{}
			for _, p := range c.Ports {
				ports[p.Name] = p.ContainerPort
			}
			for probe, path := range map[*corev1.Probe]string{c.LivenessProbe: "/healthz", c.ReadinessProbe: "/readyz"} {
				require.NotNil(t, probe, path)
				require.NotNil(t, probe.HTTPGet, path)
				require.Equal(t, path, probe.HTTPGet.Path)
				port := probe.HTTPGet.Port.String()
				if n, ok := ports[port]; ok {
					port = fmt.Sprint(n)
				}
				require.Equal(t, adminPort, port, "%s probed on the admin port", path)
			}
			if name == "callback-ingest" {
				_, listen, err := splitAddr(env["LISTEN_ADDR"])
				require.NoError(t, err)
				require.Equal(t, listen, fmt.Sprint(ports["https"]), "the https port is LISTEN_ADDR")
				requireMountedCert(t, m, pod, c, env["TLS_CERT_FILE"], env["TLS_KEY_FILE"], "", cmv1.UsageServerAuth)
			}
			// NATS: the program's own user, mutual TLS with its own certificate.
			for _, raw := range strings.Split(env["NATS_URL"], ",") {
				u, err := url.Parse(raw)
				require.NoError(t, err)
				require.NotNil(t, u.User, "NATS_URL names the user")
				require.Equal(t, name, u.User.Username())
				pw, _ := u.User.Password()
				require.Equal(t, "replace-me", pw, "the password comes from the Secret through $(NATS_PASSWORD)")
			}
			requireMountedCert(t, m, pod, c, env["NATS_TLS_CERT"], env["NATS_TLS_KEY"], env["NATS_TLS_CA"], cmv1.UsageClientAuth)

			// Its Services reach the pods, and the public one never the admin port.
			var svcs int
			for _, s := range m.services {
				if !equalLabels(s.Spec.Selector, d.Spec.Selector.MatchLabels) {
					continue
				}
				svcs++
				for _, p := range s.Spec.Ports {
					_, ok := ports[p.TargetPort.String()]
					require.True(t, ok, "Service %s targets a named port of %s", s.Name, name)
					if p.TargetPort.String() == "admin" {
						require.True(t, strings.HasSuffix(s.Name, "-admin"), "Service %s exposes the admin port: name it -admin", s.Name)
					}
				}
			}
			require.NotZero(t, svcs, "a Service selects %s", name)
			_, ok = m.pdbs[name]
			require.True(t, ok, "a PodDisruptionBudget for %s", name)
		})
	}

	t.Run("the example Secret holds placeholders only", func(t *testing.T) {
		require.Len(t, m.secrets, 1)
		for _, s := range m.secrets {
			for k, v := range s.StringData {
				require.Equal(t, "replace-me", v, "%s/%s", s.Name, k)
			}
			require.Empty(t, s.Data)
		}
	})

	t.Run("kustomization applies every manifest but the example Secret", func(t *testing.T) {
		b, err := os.ReadFile(filepath.Join("kubernetes", "kustomization.yaml"))
		require.NoError(t, err)
		var k struct {
			APIVersion string   `json:"apiVersion"`
			Kind       string   `json:"kind"`
			Namespace  string   `json:"namespace"`
			Resources  []string `json:"resources"`
		}
		require.NoError(t, yaml.UnmarshalStrict(b, &k))
		require.Equal(t, "Kustomization", k.Kind)
		var want []string
		for f := range m.files {
			if f != "secret.example.yaml" {
				want = append(want, f)
			}
		}
		require.ElementsMatch(t, want, k.Resources)
		_, ok := m.namespaces[k.Namespace]
		require.True(t, ok, "namespace %s is created", k.Namespace)
	})
}

func subset(labels, keys map[string]string) map[string]string {
	out := map[string]string{}
	for k := range keys {
		if v, ok := labels[k]; ok {
			out[k] = v
		}
	}
	return out
}

func equalLabels(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// ---------------------------------------------------------------- Helm

func TestHelmNATSValues(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("helm", "nats-values.yaml"))
	require.NoError(t, err)
	var v struct {
		Config struct {
			Nats struct {
				TLS helmTLS `json:"tls"`
			} `json:"nats"`
			Cluster struct {
				Enabled  bool    `json:"enabled"`
				Replicas int     `json:"replicas"`
				TLS      helmTLS `json:"tls"`
			} `json:"cluster"`
			JetStream struct {
				Enabled   bool `json:"enabled"`
				FileStore struct {
					Enabled bool   `json:"enabled"`
					Dir     string `json:"dir"`
					PVC     struct {
						Enabled bool   `json:"enabled"`
						Size    string `json:"size"`
					} `json:"pvc"`
				} `json:"fileStore"`
				MemoryStore struct {
					Enabled bool `json:"enabled"`
				} `json:"memoryStore"`
				Merge map[string]any `json:"merge"`
			} `json:"jetstream"`
			Monitor struct {
				Enabled bool `json:"enabled"`
				Port    int  `json:"port"`
			} `json:"monitor"`
			Merge map[string]any `json:"merge"`
		} `json:"config"`
		TLSCA struct {
			Enabled    bool   `json:"enabled"`
			SecretName string `json:"secretName"`
			Key        string `json:"key"`
		} `json:"tlsCA"`
		Container struct {
			Env   map[string]helmEnv `json:"env"`
			Patch []helmPatch        `json:"patch"`
		} `json:"container"`
		PodTemplate struct {
			Patch []helmPatch `json:"patch"`
		} `json:"podTemplate"`
	}
	require.NoError(t, yaml.UnmarshalStrict(b, &v))
	requireHelmSecurity(t, v.Config.Nats.TLS, v.Config.Cluster.TLS, v.Config.Merge, v.TLSCA.Enabled, v.TLSCA.SecretName, v.TLSCA.Key,
		v.Container.Env, v.Container.Patch, v.PodTemplate.Patch)
	c := v.Config
	require.True(t, c.Cluster.Enabled)
	require.Equal(t, 3, c.Cluster.Replicas)
	require.True(t, c.JetStream.Enabled)
	require.True(t, c.JetStream.FileStore.Enabled)
	require.True(t, c.JetStream.FileStore.PVC.Enabled, "JetStream data on a PVC")
	require.NotEmpty(t, c.JetStream.FileStore.PVC.Size)
	require.Equal(t, "always", c.JetStream.Merge["sync_interval"])
	require.EqualValues(t, 2<<20, c.Merge["max_payload"])

	// Each Deployment's NATS_URL names the chart's three pods.
	m := loadManifests(t)
	for name, d := range m.deployments {
		env, _ := containerEnv(t, m, d.Spec.Template.Spec.Containers[0])
		urls := natsURLs(t, env["NATS_URL"])
		require.Len(t, urls, c.Cluster.Replicas, name)
		for i, u := range urls {
			require.Equal(t, fmt.Sprintf("nats-%d.nats-headless.nats.svc.cluster.local:4222", i), u, name)
		}
	}
}
