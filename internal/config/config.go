package config

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Secret holds a credential. It prints, formats and marshals as [redacted]
// so that logging a config never leaks it; Reveal returns the value.
type Secret struct{ v string }

// NewSecret wraps s.
func NewSecret(s string) Secret { return Secret{v: s} }

// Reveal returns the secret's value, for the one place that must send it.
func (s Secret) Reveal() string { return s.v }

// IsZero reports whether no secret is set.
func (s Secret) IsZero() bool { return s.v == "" }

// String masks the value.
func (s Secret) String() string {
	if s.v == "" {
		return ""
	}
	return "[redacted]"
}

// GoString masks the value in %#v too.
func (s Secret) GoString() string { return s.String() }

// MarshalText masks the value in JSON and logs.
func (s Secret) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// ErrHelp is returned by Parse when -h or --help was asked for; the usage has
// been printed.
var ErrHelp = flag.ErrHelp

// Set declares the settings of one program.
type Set struct {
	fs       *flag.FlagSet
	settings []*setting
}

type setting struct {
	flag, env, def, usage string
	secret, required      bool
	sensitive             bool                // masked in Resolved, though not a secret
	redact                func(string) string // what Resolved shows of the value, when set
	set                   func(string) error
	value                 func() string
}

// NewSet starts the settings of the program called name. Usage goes to out.
func NewSet(name string, out io.Writer) *Set {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(out)
	s := &Set{fs: fs}
	fs.Usage = func() {
		fmt.Fprintf(out, "Usage of %s (every flag is also an environment variable):\n\n", name)
		for _, st := range s.settings {
			def := st.def
			if st.required {
				def = "required"
			}
			if st.secret {
				def += "; or a file named by " + st.env + "_FILE"
			}
			fmt.Fprintf(out, "  --%s  (%s)\n        %s [default: %s]\n", st.flag, st.env, st.usage, def)
		}
	}
	return s
}

func (s *Set) add(st *setting) {
	s.settings = append(s.settings, st)
	s.fs.Func(st.flag, st.usage+" (env "+st.env+")", st.set)
}

// String declares a text setting.
func (s *Set) String(p *string, flagName, env, def, usage string) {
	*p = def
	s.add(&setting{flag: flagName, env: env, def: def, usage: usage,
		set:   func(v string) error { *p = v; return nil },
		value: func() string { return *p }})
}

// Secret declares a credential, also readable from the file <env>_FILE.
func (s *Set) Secret(p *Secret, flagName, env, usage string) {
	s.add(&setting{flag: flagName, env: env, usage: usage, secret: true,
		set:   func(v string) error { *p = NewSecret(v); return nil },
		value: func() string { return p.Reveal() }})
}

// Int declares a whole-number setting.
func (s *Set) Int(p *int, flagName, env string, def int, usage string) {
	*p = def
	s.add(&setting{flag: flagName, env: env, def: strconv.Itoa(def), usage: usage,
		set: func(v string) error {
			n, err := strconv.Atoi(strings.TrimSpace(v))
			if err != nil {
				return fmt.Errorf("want a whole number, got %q", v)
			}
			*p = n
			return nil
		},
		value: func() string { return strconv.Itoa(*p) }})
}

// Float declares a decimal setting.
func (s *Set) Float(p *float64, flagName, env string, def float64, usage string) {
	*p = def
	s.add(&setting{flag: flagName, env: env, def: strconv.FormatFloat(def, 'g', -1, 64), usage: usage,
		set: func(v string) error {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				return fmt.Errorf("want a number, got %q", v)
			}
			*p = f
			return nil
		},
		value: func() string { return strconv.FormatFloat(*p, 'g', -1, 64) }})
}

// Duration declares a Go duration setting ("30s", "5m").
func (s *Set) Duration(p *time.Duration, flagName, env string, def time.Duration, usage string) {
	*p = def
	s.add(&setting{flag: flagName, env: env, def: def.String(), usage: usage,
		set: func(v string) error {
			d, err := time.ParseDuration(strings.TrimSpace(v))
			if err != nil {
				return fmt.Errorf("want a Go duration such as 30s or 5m, got %q", v)
			}
			*p = d
			return nil
		},
		value: func() string { return p.String() }})
}

// Bool declares a true/false setting.
func (s *Set) Bool(p *bool, flagName, env string, def bool, usage string) {
	*p = def
	s.add(&setting{flag: flagName, env: env, def: strconv.FormatBool(def), usage: usage,
		set: func(v string) error {
			b, err := strconv.ParseBool(strings.TrimSpace(v))
			if err != nil {
				return fmt.Errorf("want true or false, got %q", v)
			}
			*p = b
			return nil
		},
		value: func() string { return strconv.FormatBool(*p) }})
	// Let --flag mean --flag=true.
	f := s.fs.Lookup(flagName)
	f.Value = boolValue{f.Value}
}

type boolValue struct{ flag.Value }

func (boolValue) IsBoolFlag() bool { return true }

// Required marks the setting named by env as one the program cannot start without.
func (s *Set) Required(env ...string) {
	for _, e := range env {
		for _, st := range s.settings {
			if st.env == e {
				st.required = true
			}
		}
	}
}

// Sensitive marks settings that are not secrets to their program but must
// not be logged either (the callback user name ThingSpace echoes): Resolved
// masks them.
func (s *Set) Sensitive(env ...string) {
	for _, e := range env {
		for _, st := range s.settings {
			if st.env == e {
				st.sensitive = true
			}
		}
	}
}

// mask makes Resolved show the setting named by env through redact: a
// value that is mostly harmless with a secret inside (a URL's password).
func (s *Set) mask(env string, redact func(string) string) {
	for _, st := range s.settings {
		if st.env == env {
			st.redact = redact
		}
	}
}

// Parse reads the environment through getenv, then the flags in args. A
// missing required setting is an error naming its variable.
func (s *Set) Parse(args []string, getenv func(string) string) error {
	if getenv == nil {
		getenv = os.Getenv
	}
	for _, st := range s.settings {
		v := getenv(st.env)
		if st.secret && v == "" {
			if path := getenv(st.env + "_FILE"); path != "" {
				b, err := os.ReadFile(path)
				if err != nil {
					return fmt.Errorf("%s_FILE: %w", st.env, err)
				}
				v = strings.TrimRight(string(b), "\r\n")
			}
		}
		if v == "" {
			continue
		}
		if err := st.set(v); err != nil {
			return fmt.Errorf("%s: %w", st.env, err)
		}
	}
	if err := s.fs.Parse(args); err != nil {
		return err
	}
	var missing []string
	for _, st := range s.settings {
		if st.required && st.value() == "" {
			missing = append(missing, st.env)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("missing required setting %s (set the environment variable or --%s)",
			strings.Join(missing, ", "), s.flagFor(missing[0]))
	}
	return nil
}

func (s *Set) flagFor(env string) string {
	for _, st := range s.settings {
		if st.env == env {
			return st.flag
		}
	}
	return ""
}

// Args returns the arguments left after the flags.
func (s *Set) Args() []string { return s.fs.Args() }

// Resolved returns every setting by variable name, secrets masked: what a
// program logs at start.
func (s *Set) Resolved() map[string]string {
	out := make(map[string]string, len(s.settings))
	for _, st := range s.settings {
		v := st.value()
		switch {
		case (st.secret || st.sensitive) && v != "":
			v = "[redacted]"
		case st.redact != nil:
			v = st.redact(v)
		}
		out[st.env] = v
	}
	return out
}

// Names lists the variables, sorted.
func (s *Set) Names() []string {
	names := make([]string, 0, len(s.settings))
	for _, st := range s.settings {
		names = append(names, st.env)
	}
	sort.Strings(names)
	return names
}

// IsHelp reports whether err asks for help rather than reporting a fault.
func IsHelp(err error) bool { return errors.Is(err, flag.ErrHelp) }
