package sshserver

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/darling-sshd/darling-sshd/darlingexec"
)

// Options is everything `darling-sshd serve` is configured with. Start
// from DefaultOptions; Validate says what is wrong with a value.
type Options struct {
	Listen             string
	Prefix             string
	Darling            string // launcher path or name looked up in PATH
	PrefixStyle        darlingexec.Style
	LauncherLog        string // the warm-up launcher's output; "" is P.launcher.log
	HostKeyPath        string
	AuthorizedKeysPath string
	AllowUsers         []string
	AcceptEnv          []string // names or globs clients may set, beyond DefaultAcceptEnv
	KillGrace          time.Duration
	WarmTimeout        time.Duration
	LoginGraceTime     time.Duration // a connection not logged in by then is closed
	ShutdownGrace      time.Duration // how long running sessions may finish after SIGTERM
	MaxStartups        MaxStartups   // limit on unauthenticated connections
	MaxAuthTries       int           // authentication attempts per connection
	MaxSessions        int           // session channels open at once per connection
	MaxExec            int           // exec sessions running at once; 0: no limit
	KeepaliveInterval  time.Duration // 0: no keepalives
	KeepaliveCountMax  int           // unanswered keepalives before the connection is closed
	// PerSourceMaxStartups limits the unauthenticated connections from
	// one source, an IPv4 address or an IPv6 /64 (0: no limit), so that
	// one source cannot crowd out the others; PerSourceExemptLoopback
	// lifts it for 127.0.0.0/8 and ::1.
	PerSourceMaxStartups    int
	PerSourceExemptLoopback bool
	// SessionCgroups is "auto" (a cgroup per session where a writable
	// cgroup v2 hierarchy is found) or "off" (the marker and parentage
	// tracker only).
	SessionCgroups string
	// Cgroups is where sessions get their cgroups, found by the caller
	// (moving the server into a cgroup is a process-wide effect); nil:
	// none.
	Cgroups *darlingexec.Cgroups
	// Ready, if set, is called once the server accepts sessions (after
	// the warm-up): systemd's READY=1.
	Ready func()
	// Reload receives a value for each SIGHUP: reload the authorized keys.
	Reload <-chan os.Signal
	// KnownHostsOut, if set, is written at start with lines trusting the
	// host key for HostAlias and for the address clients dial.
	KnownHostsOut string
	HostAlias     string
	// StateDir holds the status socket (status.sock, root only) that
	// `darling-sshd status` and `register` read.
	StateDir string
	// MetricsAddr, if set, serves the counters in the Prometheus text
	// format on this (loopback) address.
	MetricsAddr string
	// StopContainer: on exit, stop the prefix's container if this
	// server's warm-up started it (make run); one it found running is
	// left alone.
	StopContainer bool
	// Prespawn is how many launchers are kept started ahead of the exec
	// sessions without a terminal that will use them (0: none).
	Prespawn int
	// Hurry, once it receives or is closed, cuts the shutdown grace
	// short: running sessions are ended at once (a second Ctrl-C).
	Hurry <-chan struct{}
	Log   *slog.Logger
}

// DefaultOptions returns the server's defaults, which serve's flags show.
func DefaultOptions() Options {
	return Options{
		Listen:             "127.0.0.1:2222",
		Prefix:             "/var/lib/darling-builder/prefix",
		Darling:            "darling",
		PrefixStyle:        darlingexec.DefaultStyle,
		HostKeyPath:        "/var/lib/darling-sshd/ssh_host_ed25519_key",
		AuthorizedKeysPath: "/etc/nix/darling-builder-key.pub",
		AllowUsers:         []string{"root"},
		KillGrace:          5 * time.Second,
		WarmTimeout:        60 * time.Second,
		LoginGraceTime:     30 * time.Second,
		ShutdownGrace:      30 * time.Second,
		MaxStartups:        MaxStartups{64, 30, 256},
		MaxAuthTries:       6,
		MaxSessions:        10,
		KeepaliveInterval:  15 * time.Second,
		KeepaliveCountMax:  3,
		SessionCgroups:     "auto",
		KnownHostsOut:      "/var/lib/darling-sshd/known_hosts",
		HostAlias:          "darling-builder",
		StateDir:           "/var/lib/darling-sshd",
		// Two launchers started ahead: a build's connections seldom
		// arrive faster than two refills; 0 turns the pool off.
		Prespawn: 2,

		// Half of MaxStartups' start: one source alone never starts the
		// random early drop, and 32 logins at once from one host (the Nix
		// daemon's parallel builds) all pass; with 10, 22 of 32 did not.
		PerSourceMaxStartups: 32,
	}
}

// OptionError is a bad value for one option, named as serve's flag.
type OptionError struct {
	Flag string
	Err  error
}

func (e *OptionError) Error() string { return fmt.Sprintf("invalid value for --%s: %v", e.Flag, e.Err) }

func (e *OptionError) Unwrap() error { return e.Err }

// Validate checks every option; the first bad one is an *OptionError.
func (o *Options) Validate() error {
	bad := func(flag, msg string) error { return &OptionError{flag, errors.New(msg)} }
	if _, err := darlingexec.ParseStyle(string(o.PrefixStyle)); err != nil {
		return &OptionError{"prefix-style", err}
	}
	for _, d := range []struct {
		flag     string
		v        time.Duration
		positive bool
	}{
		{"kill-grace", o.KillGrace, false}, {"warm-timeout", o.WarmTimeout, true},
		{"login-grace-time", o.LoginGraceTime, true}, {"shutdown-grace", o.ShutdownGrace, false},
		{"keepalive-interval", o.KeepaliveInterval, false},
	} {
		if d.v < 0 || (d.positive && d.v == 0) {
			return bad(d.flag, map[bool]string{true: "must be positive", false: "must not be negative"}[d.positive])
		}
	}
	for _, n := range []struct {
		flag   string
		v, min int
	}{{"max-auth-tries", o.MaxAuthTries, 1}, {"max-sessions", o.MaxSessions, 1}, {"max-exec", o.MaxExec, 0},
		{"keepalive-count-max", o.KeepaliveCountMax, 1}, {"per-source-max-startups", o.PerSourceMaxStartups, 0},
		{"prespawn", o.Prespawn, 0}} {
		if n.v < n.min {
			return bad(n.flag, fmt.Sprintf("must be at least %d", n.min))
		}
	}
	if err := o.MaxStartups.check(); err != nil {
		return &OptionError{"max-startups", err}
	}
	switch {
	case o.SessionCgroups != "auto" && o.SessionCgroups != "off":
		return bad("session-cgroups", fmt.Sprintf("%q: want auto or off", o.SessionCgroups))
	case o.Prefix == "":
		return bad("prefix", "must not be empty")
	case o.Darling == "":
		return bad("darling", "must not be empty")
	case len(o.AllowUsers) == 0:
		return bad("allow-users", "names no user")
	}
	if o.MetricsAddr != "" {
		if err := checkLoopback(o.MetricsAddr); err != nil {
			return &OptionError{"metrics", err}
		}
	}
	for _, p := range o.AcceptEnv {
		if err := CheckEnvPattern(p); err != nil {
			return &OptionError{"accept-env", err}
		}
	}
	return nil
}
