package archtest_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

const module = "github.com/esim-pipeline/thingspace-esim"

// layer is a rank in the import direction: a package imports only packages
// of a lower rank or of its own layer.
type layer struct {
	name     string
	rank     int
	prefixes []string // module-relative paths; a prefix covers its subpackages
}

var (
	programs = layer{"program", 5, []string{"cmd", "deploy", "internal/pipelinetest", "test"}}
	// composition runs the programs' parts inside one process.
	composition = layer{"composition", 4, []string{"internal/stack"}}
	application = layer{"application", 3, []string{"internal/dispatch", "internal/callback"}}
	adapters    = layer{"adapter", 2, []string{"internal/thingspace", "internal/simulator", "internal/broker",
		"internal/correlation", "internal/ratelimit"}}
	models = layer{"model", 1, []string{"internal/device", "internal/command", "internal/status", "internal/batch", "internal/order"}}
	leaves = layer{"leaf", 0, []string{"schemas", "internal/config", "internal/observability", "internal/natstest", "internal/testkit", "internal/archtest"}}

	layers = []layer{programs, composition, application, adapters, models, leaves}

	// unlisted is the layer of a package no prefix names.
	unlisted = adapters
)

// What a model may import beyond the standard library and the module's models.
var (
	// modelModuleImports are the non-model module packages a model may depend on.
	modelModuleImports = []string{"schemas"}
	// modelThirdParty are the third-party libraries (path prefixes) a model
	// may import directly: pure computation, no I/O.
	modelThirdParty = []string{"github.com/santhosh-tekuri/jsonschema/", "golang.org/x/text/", "github.com/goccy/go-json"}
	// modelStdlibDenied are standard packages (and their subpackages) that do
	// I/O or log; a model imports none of them directly.
	modelStdlibDenied = []string{"net", "os", "syscall", "io/ioutil", "log", "database/sql", "plugin", "net/http"}
	// testOnly are module packages that only tests may import.
	testOnly = []string{"internal/natstest", "internal/testkit", "internal/pipelinetest"}
)

// pkg is what the rules need of `go list -json`.
type pkg struct {
	ImportPath string
	Name       string
	Standard   bool
	Imports    []string
	Deps       []string
}

func rel(path string) (string, bool) {
	if path == module {
		return "", true
	}
	r, ok := strings.CutPrefix(path, module+"/")
	return r, ok
}

func under(r string, prefixes []string) bool {
	return slices.ContainsFunc(prefixes, func(p string) bool { return r == p || strings.HasPrefix(r, p+"/") })
}

func layerOf(p pkg) layer {
	r, _ := rel(p.ImportPath)
	if p.Name == "main" {
		return programs
	}
	for _, l := range layers {
		if under(r, l.prefixes) {
			return l
		}
	}
	return unlisted
}

// check applies every rule to the module's packages and says what breaks them.
func check(all []pkg) []string {
	byPath := map[string]pkg{}
	for _, p := range all {
		byPath[p.ImportPath] = p
	}
	var bad []string
	for _, p := range all {
		r, ours := rel(p.ImportPath)
		if !ours {
			continue
		}
		from := layerOf(p)
		for _, imp := range p.Imports {
			ir, importsOurs := rel(imp)
			if !importsOurs {
				continue
			}
			to := layerOf(byPath[imp])
			if to.name == programs.name || byPath[imp].Name == "main" {
				bad = append(bad, fmt.Sprintf("%s imports %s: nothing imports a program", r, ir))
				continue
			}
			if to.rank > from.rank {
				bad = append(bad, fmt.Sprintf("%s (%s) imports %s (%s): imports go %s → %s → %s → %s → %s → %s only",
					r, from.name, ir, to.name, programs.name, composition.name, application.name, adapters.name, models.name, leaves.name))
			}
		}
		for _, dep := range p.Deps {
			dr, depOurs := rel(dep)
			if depOurs && under(dr, testOnly) && !under(r, testOnly) {
				bad = append(bad, fmt.Sprintf("%s depends on %s, which only tests may import", r, dr))
			}
		}
		if from.name != models.name {
			continue
		}
		for _, dep := range p.Deps {
			dr, depOurs := rel(dep)
			if depOurs && layerOf(byPath[dep]).name != models.name && !under(dr, modelModuleImports) {
				bad = append(bad, fmt.Sprintf("%s (model) depends on %s: a model depends on models and %s only",
					r, dr, strings.Join(modelModuleImports, ", ")))
			}
		}
		for _, imp := range p.Imports {
			if _, importsOurs := rel(imp); importsOurs {
				continue
			}
			switch {
			case byPath[imp].Standard || !strings.Contains(strings.Split(imp, "/")[0], "."):
				if under(imp, modelStdlibDenied) {
					bad = append(bad, fmt.Sprintf("%s (model) imports %s: models do no I/O and do not log", r, imp))
				}
			case !slices.ContainsFunc(modelThirdParty, func(p string) bool { return strings.HasPrefix(imp+"/", p) }):
				bad = append(bad, fmt.Sprintf("%s (model) imports %s: not a library models may use (allow it in archtest if it does no I/O)", r, imp))
			}
		}
	}
	slices.Sort(bad)
	return slices.Compact(bad)
}

func moduleRoot(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("go", "env", "GOMOD").Output()
	require.NoError(t, err)
	gomod := strings.TrimSpace(string(out))
	require.NotEmpty(t, gomod, "not inside the module")
	return filepath.Dir(gomod)
}

func list(t *testing.T) []pkg {
	t.Helper()
	cmd := exec.Command("go", "list", "-e", "-deps", "-json", "./...")
	cmd.Dir = moduleRoot(t)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	require.NoError(t, err, stderr.String())
	var pkgs []pkg
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var p pkg
		err := dec.Decode(&p)
		if errors.Is(err, io.EOF) {
			break
		}
		require.NoError(t, err)
		pkgs = append(pkgs, p)
	}
	return pkgs
}

func TestTheModuleKeepsTheImportDirection(t *testing.T) {
	pkgs := list(t)
	var ours []string
	for _, p := range pkgs {
		if r, ok := rel(p.ImportPath); ok {
			ours = append(ours, r+" ("+layerOf(p).name+")")
		}
	}
	require.Contains(t, ours, "internal/device (model)", "go list saw the module")
	t.Logf("layers: %s", strings.Join(ours, ", "))
	require.Empty(t, check(pkgs))
}

// The rules themselves, on made-up graphs.
func TestTheRulesCatchWhatTheyMustAndPassTheRest(t *testing.T) {
	m := func(r string) string {
		if r == "" {
			return module
		}
		return module + "/" + r
	}
	p := func(r string, imports ...string) pkg {
		var full []string
		for _, i := range imports {
			if strings.Contains(strings.Split(i, "/")[0], ".") {
				full = append(full, i)
				continue
			}
			if strings.HasPrefix(i, "std:") {
				full = append(full, strings.TrimPrefix(i, "std:"))
				continue
			}
			full = append(full, m(i))
		}
		name := filepath.Base(r)
		if strings.HasPrefix(r, "cmd/") {
			name = "main"
		}
		return pkg{ImportPath: m(r), Name: name, Imports: full, Deps: full}
	}
	tests := []struct {
		name string
		pkgs []pkg
		want []string
	}{
		{"the intended direction passes", []pkg{
			p("cmd/dispatcher", "internal/dispatch", "internal/config"),
			p("internal/dispatch", "internal/command", "internal/broker", "internal/observability"),
			p("internal/broker", "internal/config", "github.com/nats-io/nats.go"),
			p("internal/command", "internal/device", "internal/status", "schemas", "github.com/santhosh-tekuri/jsonschema/v6", "std:encoding/json"),
			p("internal/device", "std:strings"),
			p("internal/status", "internal/device"),
			p("schemas", "github.com/santhosh-tekuri/jsonschema/v6", "std:embed"),
			p("internal/config", "std:os"),
		}, nil},
		{"a model importing an adapter", []pkg{
			p("internal/status", "internal/broker"), p("internal/broker"),
		}, []string{
			"internal/status (model) depends on internal/broker: a model depends on models and schemas only",
			"internal/status (model) imports internal/broker (adapter): imports go program → composition → application → adapter → model → leaf only",
		}},
		{"a model importing a leaf other than schemas", []pkg{
			p("internal/batch", "internal/observability"), p("internal/observability"),
		}, []string{"internal/batch (model) depends on internal/observability: a model depends on models and schemas only"}},
		{"a model created later doing I/O", []pkg{
			p("internal/batch/clock", "std:os", "std:net/http", "github.com/rs/zerolog"),
		}, []string{
			"internal/batch/clock (model) imports github.com/rs/zerolog: not a library models may use (allow it in archtest if it does no I/O)",
			"internal/batch/clock (model) imports net/http: models do no I/O and do not log",
			"internal/batch/clock (model) imports os: models do no I/O and do not log",
		}},
		{"an adapter importing the application", []pkg{
			p("internal/thingspace", "internal/dispatch"), p("internal/dispatch"),
		}, []string{"internal/thingspace (adapter) imports internal/dispatch (application): imports go program → composition → application → adapter → model → leaf only"}},
		{"an unlisted package counts as an adapter", []pkg{
			p("internal/command", "internal/reports"), p("internal/reports", "internal/callback"), p("internal/callback"),
		}, []string{
			"internal/command (model) depends on internal/reports: a model depends on models and schemas only",
			"internal/command (model) imports internal/reports (adapter): imports go program → composition → application → adapter → model → leaf only",
			"internal/reports (adapter) imports internal/callback (application): imports go program → composition → application → adapter → model → leaf only",
		}},
		{"a package importing a program", []pkg{
			p("internal/dispatch", "cmd/esimctl"), p("cmd/esimctl"),
		}, []string{"internal/dispatch imports cmd/esimctl: nothing imports a program"}},
		{"production code importing natstest", []pkg{
			p("internal/broker", "internal/natstest"), p("internal/natstest", "github.com/nats-io/nats-server/v2/server"),
		}, []string{"internal/broker depends on internal/natstest, which only tests may import"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			require.Equal(t, tt.want, check(tt.pkgs))
		})
	}
}
