package deploy_test

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	cmv1 "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

// caIssuer is the ClusterIssuer of the pipeline's own CA (kubernetes/pki).
const caIssuer = "thingspace-esim-ca"

// requireMountedCert checks that a container reads a cert-manager
// certificate where its settings say: the files of one Secret volume,
// mounted read-only as a directory (a subPath would never see a renewal),
// kept by a Certificate of the pipeline's CA with the given use.
func requireMountedCert(t *testing.T, m manifests, pod corev1.PodSpec, c corev1.Container, certFile, keyFile, caFile string, usage cmv1.KeyUsage) {
	t.Helper()
	require.NotEmpty(t, certFile, "%s: a certificate file is set", c.Name)
	dir := filepath.Dir(certFile)
	require.Equal(t, filepath.Join(dir, "tls.crt"), certFile, c.Name)
	require.Equal(t, filepath.Join(dir, "tls.key"), keyFile, c.Name)
	if caFile != "" {
		require.Equal(t, filepath.Join(dir, "ca.crt"), caFile, c.Name)
	}
	var volume string
	for _, vm := range c.VolumeMounts {
		if vm.MountPath == dir {
			require.True(t, vm.ReadOnly, "%s mounts %s read-only", c.Name, dir)
			require.Empty(t, vm.SubPath, "%s mounts %s with subPath: renewals would never reach it", c.Name, dir)
			volume = vm.Name
		}
	}
	require.NotEmpty(t, volume, "%s mounts %s", c.Name, dir)
	var secret string
	for _, v := range pod.Volumes {
		if v.Name == volume {
			require.NotNil(t, v.Secret, "%s: volume %s is a Secret", c.Name, volume)
			secret = v.Secret.SecretName
		}
	}
	cert, ok := m.certs[secret]
	require.True(t, ok, "%s: a Certificate keeps Secret %s", c.Name, secret)
	require.Contains(t, cert.Spec.Usages, usage, "Certificate %s is for %s", cert.Name, usage)
	require.Equal(t, caIssuer, cert.Spec.IssuerRef.Name, "Certificate %s comes from the pipeline's CA", cert.Name)
	require.Equal(t, "ClusterIssuer", cert.Spec.IssuerRef.Kind, cert.Name)
	if usage == cmv1.UsageClientAuth {
		require.Equal(t, c.Name, cert.Spec.CommonName, "the NATS client certificate names the user")
	}
}

func TestKubernetesIngressServesCallbacksOverTLSOnly(t *testing.T) {
	m := loadManifests(t)
	in, ok := m.ingresses["callback-ingest"]
	require.True(t, ok)
	require.Len(t, in.Spec.TLS, 1)
	public, ok := m.certs[in.Spec.TLS[0].SecretName]
	require.True(t, ok, "a Certificate keeps the Ingress's TLS Secret")
	cm := m.configMaps["thingspace-esim"]
	host := hostOf(t, cm.Data["CALLBACK_URL"])
	require.Contains(t, public.Spec.DNSNames, host, "the public certificate names CALLBACK_URL's host")
	require.Contains(t, in.Spec.TLS[0].Hosts, host)
	require.True(t, strings.HasPrefix(cm.Data["CALLBACK_URL"], "https://"), "ThingSpace posts over HTTPS")
	require.Len(t, in.Spec.Rules, 1)
	rule := in.Spec.Rules[0]
	require.Equal(t, host, rule.Host)
	require.Len(t, rule.HTTP.Paths, 1, "POST /callbacks only: no health or admin route")
	path := rule.HTTP.Paths[0]
	require.Equal(t, "/callbacks", path.Path)
	svc, ok := m.services[path.Backend.Service.Name]
	require.True(t, ok, "the Ingress's Service exists")
	require.False(t, strings.HasSuffix(svc.Name, "-admin"), "the Ingress reaches an admin port")
	var port bool
	for _, p := range svc.Spec.Ports {
		if p.Name == path.Backend.Service.Port.Name {
			port = true
			require.Equal(t, "https", p.TargetPort.String())
		}
	}
	require.True(t, port, "the Ingress names a port of %s", svc.Name)
	a := in.Annotations
	require.Equal(t, "HTTPS", a["nginx.ingress.kubernetes.io/backend-protocol"])
	require.Equal(t, "on", a["nginx.ingress.kubernetes.io/proxy-ssl-verify"])
	backend := strings.TrimPrefix(a["nginx.ingress.kubernetes.io/proxy-ssl-secret"], "thingspace-esim/")
	backendCert, ok := m.certs[backend]
	require.True(t, ok, "the Ingress verifies the ingests with the CA of %s", backend)
	require.Contains(t, backendCert.Spec.DNSNames, a["nginx.ingress.kubernetes.io/proxy-ssl-name"])
}

func TestKubernetesPKIMakesThePipelinesCA(t *testing.T) {
	m := loadManifestsIn(t, filepath.Join("kubernetes", "pki"))
	ca, ok := m.issuers[caIssuer]
	require.True(t, ok)
	require.NotNil(t, ca.Spec.CA)
	cert, ok := m.certs[ca.Spec.CA.SecretName]
	require.True(t, ok, "a Certificate makes the CA's Secret")
	require.True(t, cert.Spec.IsCA)
	require.Equal(t, "cert-manager", cert.Namespace, "a ClusterIssuer reads its CA from cert-manager's namespace")
	boot, ok := m.issuers[cert.Spec.IssuerRef.Name]
	require.True(t, ok)
	require.NotNil(t, boot.Spec.SelfSigned)
	requireKustomization(t, filepath.Join("kubernetes", "pki"), "", []string{"pki.yaml"}, nil)
}

// requireKustomization reads dir's kustomization strictly and checks its
// namespace, resources and generated ConfigMaps' files.
func requireKustomization(t *testing.T, dir, namespace string, resources []string, configMapFiles map[string][]string) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "kustomization.yaml"))
	require.NoError(t, err)
	var k struct {
		APIVersion       string   `json:"apiVersion"`
		Kind             string   `json:"kind"`
		Namespace        string   `json:"namespace"`
		Resources        []string `json:"resources"`
		GeneratorOptions struct {
			DisableNameSuffixHash bool `json:"disableNameSuffixHash"`
		} `json:"generatorOptions"`
		ConfigMapGenerator []struct {
			Name  string   `json:"name"`
			Files []string `json:"files"`
		} `json:"configMapGenerator"`
	}
	require.NoError(t, yaml.UnmarshalStrict(b, &k), dir)
	require.Equal(t, "Kustomization", k.Kind)
	require.Equal(t, namespace, k.Namespace, dir)
	require.ElementsMatch(t, resources, k.Resources, dir)
	got := map[string][]string{}
	for _, g := range k.ConfigMapGenerator {
		got[g.Name] = g.Files
		for _, f := range g.Files {
			_, err := os.Stat(filepath.Join(dir, f))
			require.NoError(t, err, "%s: %s generates from %s", dir, g.Name, f)
		}
	}
	if configMapFiles != nil {
		require.Equal(t, configMapFiles, got, dir)
		require.True(t, k.GeneratorOptions.DisableNameSuffixHash, "%s: the Helm values name the ConfigMap as it is", dir)
	}
}

// helmTLS is a tls block of the NATS chart's values.
type helmTLS struct {
	Enabled    bool           `json:"enabled"`
	SecretName string         `json:"secretName"`
	Merge      map[string]any `json:"merge"`
}

type helmEnv struct {
	ValueFrom corev1.EnvVarSource `json:"valueFrom"`
}

type helmPatch struct {
	Op    string         `json:"op"`
	Path  string         `json:"path"`
	Value map[string]any `json:"value"`
}

var envRef = regexp.MustCompile(`\$(NATS_[A-Z_]+_PASSWORD)`)

// requireHelmSecurity checks the NATS chart values against deploy/nats: TLS
// (mutual) on the client listener and the routes with the Certificates of
// deploy/nats/certificates.yaml, accounts.conf included from the ConfigMap
// deploy/nats generates, every password accounts.conf reads in the
// servers' environment from a Secret.
func requireHelmSecurity(t *testing.T, client, routes helmTLS, merge map[string]any, caOn bool, caSecret, caKey string,
	env map[string]helmEnv, containerPatch, podPatch []helmPatch) {
	t.Helper()
	natsObjs := loadManifestsIn(t, "nats")
	requireKustomization(t, "nats", "nats", []string{"certificates.yaml"},
		map[string][]string{"nats-accounts": {"accounts.conf", "permissions.conf"}})
	for what, block := range map[string]helmTLS{"client listener": client, "routes": routes} {
		require.True(t, block.Enabled, "TLS on the %s", what)
		cert, ok := natsObjs.certs[block.SecretName]
		require.True(t, ok, "a Certificate in deploy/nats keeps %s", block.SecretName)
		require.Equal(t, caIssuer, cert.Spec.IssuerRef.Name)
		require.Equal(t, true, block.Merge["verify"], "the %s require a client certificate", what)
	}
	require.Contains(t, natsObjs.certs[routes.SecretName].Spec.Usages, cmv1.UsageClientAuth, "routes dial out with their certificate")
	for i := range 3 {
		host := "nats-" + string(rune('0'+i)) + ".nats-headless.nats.svc.cluster.local"
		require.True(t, slices.ContainsFunc(natsObjs.certs[client.SecretName].Spec.DNSNames, func(n string) bool {
			return n == host || (strings.HasPrefix(n, "*.") && strings.HasSuffix(host, n[1:]) && !strings.Contains(strings.TrimSuffix(host, n[1:]), "."))
		}), "the servers' certificate names %s", host)
	}
	require.True(t, caOn)
	require.Equal(t, client.SecretName, caSecret)
	require.Equal(t, "ca.crt", caKey)

	include, _ := merge["$include"].(string)
	require.Equal(t, "accounts/accounts.conf", include, "the users and permissions are included")
	var mountPath string
	for _, p := range containerPatch {
		if p.Value["name"] == "accounts" {
			mountPath, _ = p.Value["mountPath"].(string)
		}
	}
	require.Equal(t, "/etc/nats-config/accounts", mountPath, "accounts.conf sits beside the chart's nats.conf")
	var mounted bool
	for _, p := range podPatch {
		if p.Value["name"] == "accounts" {
			cm, _ := p.Value["configMap"].(map[string]any)
			mounted = cm["name"] == "nats-accounts"
		}
	}
	require.True(t, mounted, "the pods mount the ConfigMap nats-accounts")

	b, err := os.ReadFile(filepath.Join("nats", "accounts.conf"))
	require.NoError(t, err)
	refs := envRef.FindAllStringSubmatch(string(b), -1)
	require.Len(t, refs, len(natsPasswords))
	for _, r := range refs {
		e, ok := env[r[1]]
		require.True(t, ok, "the servers' environment has %s", r[1])
		require.NotNil(t, e.ValueFrom.SecretKeyRef, "%s comes from a Secret", r[1])
		require.Equal(t, "nats-users", e.ValueFrom.SecretKeyRef.Name)
	}
}
