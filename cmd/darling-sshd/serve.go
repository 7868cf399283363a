package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"strings"
	"syscall"

	"github.com/coreos/go-systemd/v22/daemon"
	"golang.org/x/sys/unix"

	"github.com/darling-sshd/darling-sshd/darlingexec"
	"github.com/darling-sshd/darling-sshd/sshserver"
)

// serveGCPercent is serve's garbage collection target unless GOGC is set.
// Collections are cheap for this server: its live heap is small, and
// received packets and copy buffers come from pools, so transfers
// allocate little. A low target keeps garbage, and goroutine stacks grown
// during a login (the runtime shrinks them only at a collection), from
// sitting in memory between sessions, at a CPU cost too small to measure.
const serveGCPercent = 25

// serveProcs is serve's GOMAXPROCS unless --procs or GOMAXPROCS says
// otherwise. A packet crosses three goroutines (x/crypto's read loop, its
// mux loop, the session's copier); with a second P idle, each hand-off
// wakes a thread on another core and the scheduler spins looking for
// work. One P runs them in turn on one thread: on a 2-core machine that
// measured 20-40% less server CPU per GiB both ways and shorter single
// transfers, against 14% longer for 32 uploads at once (README,
// Performance).
const serveProcs = 1

func serveCmd(fs *flag.FlagSet) action {
	d := sshserver.DefaultOptions()
	o := d
	fs.StringVar(&o.Listen, "listen", d.Listen, "address to listen on (host:port)")
	lf := addLauncherFlags(fs)
	fs.StringVar(&o.HostKeyPath, "host-key", d.HostKeyPath, "ed25519 host key file, generated if missing")
	fs.StringVar(&o.AuthorizedKeysPath, "authorized-keys", d.AuthorizedKeysPath, "public key or authorized_keys file of the users allowed in")
	allowUsers := fs.String("allow-users", strings.Join(d.AllowUsers, ","), "comma-separated login names allowed in")
	acceptEnv := fs.String("accept-env", "", "comma-separated names or globs of variables clients may set, beyond "+strings.Join(sshserver.DefaultAcceptEnv(), ","))
	fs.StringVar(&o.KnownHostsOut, "known-hosts-out", d.KnownHostsOut, "known_hosts file to write for the host key (empty: none)")
	fs.StringVar(&o.HostAlias, "host-alias", d.HostAlias, "host alias the known_hosts file names, as ssh-config's HostKeyAlias")
	fs.StringVar(&o.StateDir, "state-dir", d.StateDir, "folder for the status socket (status.sock, root only) that status and register read")
	fs.StringVar(&o.MetricsAddr, "metrics", "", "serve the counters in the Prometheus text format on this loopback address, e.g. 127.0.0.1:9122 (off when empty)")
	fs.BoolVar(&o.StopContainer, "stop-container", false, "on exit, stop the prefix's container if this server's warm-up started it (one found running is left alone)")
	fs.DurationVar(&o.KillGrace, "kill-grace", d.KillGrace, "time between SIGHUP and SIGKILL when a session's processes are ended")
	fs.DurationVar(&o.WarmTimeout, "warm-timeout", d.WarmTimeout, "how long warming the prefix may take")
	fs.DurationVar(&o.LoginGraceTime, "login-grace-time", d.LoginGraceTime, "a connection that has not logged in by then is closed")
	maxStartups := fs.String("max-startups", fmt.Sprintf("%d:%d:%d", d.MaxStartups.Start, d.MaxStartups.Rate, d.MaxStartups.Full), "unauthenticated connections: start:rate:full, as sshd's MaxStartups")
	fs.IntVar(&o.PerSourceMaxStartups, "per-source-max-startups", d.PerSourceMaxStartups, "unauthenticated connections one source (an IPv4 address or IPv6 /64) may have at once; more are dropped, so that one source cannot crowd out the others. The default, half of max-startups' start, lets 32 logins at once from one host (the Nix daemon's parallel builds) through (0: no limit)")
	fs.BoolVar(&o.PerSourceExemptLoopback, "per-source-exempt-loopback", d.PerSourceExemptLoopback, "no per-source limit for 127.0.0.0/8 and ::1 (a local proxy or Nix daemon that opens many connections at once)")
	fs.IntVar(&o.MaxAuthTries, "max-auth-tries", d.MaxAuthTries, "authentication attempts per connection")
	fs.IntVar(&o.MaxSessions, "max-sessions", d.MaxSessions, "sessions open at once per connection")
	fs.IntVar(&o.Prespawn, "prespawn", d.Prespawn, "launchers kept started ahead of the exec sessions without a terminal that will use them, so that a session does not wait for Darling's start; needs session cgroups (0: none)")
	fs.IntVar(&o.MaxExec, "max-exec", d.MaxExec, "exec sessions running at once; beyond, they wait their turn (0: no limit; shells and SFTP never wait)")
	fs.DurationVar(&o.KeepaliveInterval, "keepalive-interval", d.KeepaliveInterval, "how often to check that a client is still there (0: never)")
	fs.IntVar(&o.KeepaliveCountMax, "keepalive-count-max", d.KeepaliveCountMax, "unanswered keepalives before a connection is closed")
	fs.StringVar(&o.SessionCgroups, "session-cgroups", d.SessionCgroups, "auto: each session in a cgroup of its own where a writable cgroup v2 is found; off: the marker and parentage tracker only")
	fs.DurationVar(&o.ShutdownGrace, "shutdown-grace", d.ShutdownGrace, "on SIGTERM or SIGINT, how long running sessions may finish before they are ended (a second signal ends them at once)")
	logLevel := fs.String("log-level", "info", "log level: debug, info, warn or error")
	pprofAddr := fs.String("pprof", "", "serve Go's profiles on this address, e.g. 127.0.0.1:6060 (off when empty)")
	procs := fs.Int("procs", serveProcs, "threads running the server's Go code at once (GOMAXPROCS; the GOMAXPROCS variable sets it when this flag is not given): 1 costs the least CPU per byte, more serve many transfers at once faster (0: one per CPU)")
	return func(_, stderr io.Writer) int {
		var level slog.Level
		if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
			return flagError(stderr, "serve", "log-level", err)
		}
		ms, err := sshserver.ParseMaxStartups(*maxStartups)
		if err != nil {
			return flagError(stderr, "serve", "max-startups", err)
		}
		o.MaxStartups, o.AllowUsers, o.AcceptEnv = ms, list(*allowUsers), list(*acceptEnv)
		lf.apply(&o)
		var oe *sshserver.OptionError
		if err := o.Validate(); errors.As(err, &oe) {
			return flagError(stderr, "serve", oe.Flag, oe.Err)
		}
		if *procs < 0 {
			return flagError(stderr, "serve", "procs", errors.New("must be 0 or more"))
		}
		given := false
		fs.Visit(func(f *flag.Flag) { given = given || f.Name == "procs" })
		switch {
		case given && *procs == 0:
			runtime.SetDefaultGOMAXPROCS()
		case given || os.Getenv("GOMAXPROCS") == "":
			runtime.GOMAXPROCS(*procs)
		}
		o.Log = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
		return serveWith(o, *pprofAddr)
	}
}

// serveWith applies serve's process-wide settings, then runs the server
// until SIGINT or SIGTERM; a second one cuts the shutdown grace short.
func serveWith(o sshserver.Options, pprofAddr string) int {
	log := o.Log
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(serveGCPercent)
	}
	// File descriptors the server inherited without close-on-exec would
	// reach every launcher, and through a cold start the container and
	// every command, holding the parent's pipes open.
	if err := unix.CloseRange(3, ^uint(0), unix.CLOSE_RANGE_CLOEXEC); err != nil {
		log.Error("darling-sshd serve: mark inherited files close-on-exec", "err", err)
		return 1
	}
	if pprofAddr != "" {
		pl, err := servePprof(pprofAddr, log)
		if err != nil {
			log.Error("darling-sshd serve failed", "err", err)
			return 1
		}
		defer pl.Close()
	}
	if o.SessionCgroups == "auto" {
		cg, err := darlingexec.FindCgroups()
		if err != nil {
			log.Warn("no cgroup for sessions: a session's processes are found by the marker in their environment and by parentage only, so one that clears its environment and leaves its parent before the next scan (every 500 ms) can outlive its session",
				"err", err)
		} else {
			defer cg.Close()
			o.Cgroups = cg
			log.Info("each session gets a cgroup of its own", "dir", cg.Dir())
		}
	}
	ctx, hurry, release := stopSignals()
	defer release()
	reload := make(chan os.Signal, 1)
	signal.Notify(reload, syscall.SIGHUP)
	defer signal.Stop(reload)
	o.Reload, o.Hurry = reload, hurry
	o.Ready = func() { _, _ = daemon.SdNotify(false, daemon.SdNotifyReady) }
	if err := sshserver.Run(ctx, o); err != nil {
		log.Error("darling-sshd serve failed", "err", err)
		return 1
	}
	return 0
}

// stopSignals returns a context cancelled by the first SIGINT or SIGTERM
// (drain: the sessions get the shutdown grace) and a channel closed by the
// second (end them now); release stops listening.
func stopSignals() (ctx context.Context, hurry <-chan struct{}, release func()) {
	ctx, cancel := context.WithCancel(context.Background())
	stops := make(chan os.Signal, 2)
	signal.Notify(stops, syscall.SIGINT, syscall.SIGTERM)
	second, finished := make(chan struct{}), make(chan struct{})
	go func() {
		select {
		case <-stops:
			cancel()
		case <-finished:
			return
		}
		select {
		case <-stops:
			close(second)
		case <-finished:
		}
	}()
	return ctx, second, func() {
		signal.Stop(stops)
		close(finished)
		cancel()
	}
}

// launcherFlags are the flags serve and init share to reach the prefix.
type launcherFlags struct {
	prefix, darling, style, log *string
}

func addLauncherFlags(fs *flag.FlagSet) launcherFlags {
	d := sshserver.DefaultOptions()
	return launcherFlags{
		prefix:  fs.String("prefix", d.Prefix, "Darling prefix the sessions run in (Darling creates it; we never do)"),
		darling: fs.String("darling", d.Darling, "Darling launcher: a path, or a name looked up in PATH"),
		style:   fs.String("prefix-style", string(d.PrefixStyle), "how the launcher gets the prefix: env (DPREFIX only, as upstream Darling takes it) or flag (--prefix P plus DPREFIX, for a wrapper that wants it)"),
		log:     fs.String("launcher-log", "", "file the warm-up's launcher, and a container it starts, write their output to (default: the prefix path + .launcher.log)"),
	}
}

// apply sets the launcher's options from the flags.
func (lf launcherFlags) apply(o *sshserver.Options) {
	o.Prefix, o.Darling, o.PrefixStyle, o.LauncherLog = *lf.prefix, *lf.darling, darlingexec.Style(*lf.style), *lf.log
}
