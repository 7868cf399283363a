// Command darling-sshd is an SSH server that runs every session inside a
// Darling prefix, so a Linux machine can serve as a Nix remote builder for
// x86_64-darwin. This file holds subcommands and flags only.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	gossh "golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"

	"github.com/darling-sshd/darling-sshd/auth"
	"github.com/darling-sshd/darling-sshd/darlingexec"
	"github.com/darling-sshd/darling-sshd/sshserver"
)

const usage = `usage: darling-sshd <command> [flags]

commands:
  serve          serve SSH sessions inside the Darling prefix
  init           prepare the prefix for Nix (nix.conf, /var/empty, optionally a shared store)
  hostkey        print the host key's public line (generating the key if missing)
  check          connect as Nix would and run the nix-store --serve handshake
  machines-line  print the builder's /etc/nix/machines line
  ssh-config     print the ssh_config Host block matching machines-line

Run "darling-sshd <command> -h" for a command's flags.
`

// Defaults shared by several subcommands.
const (
	defaultIdentity = "/etc/nix/darling-builder-key"
)

// serveGCPercent is serve's garbage collection target unless GOGC is set.
// Collections are cheap for this server: its live heap is small, and
// received packets and copy buffers come from pools, so transfers
// allocate little. A low target keeps garbage, and goroutine stacks grown
// during a login (the runtime shrinks them only at a collection), from
// sitting in memory between sessions, at a CPU cost too small to measure.
const serveGCPercent = 25

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "serve":
		return serve(args[1:], stderr)
	case "hostkey":
		return hostkey(args[1:], stdout, stderr)
	case "init":
		return initPrefix(args[1:], stdout, stderr)
	case "check":
		return check(args[1:], stdout, stderr)
	case "machines-line", "ssh-config":
		return builderText(args[0], args[1:], stdout, stderr)
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stdout, usage)
		return 0
	}
	fmt.Fprintf(stderr, "darling-sshd: unknown command %q (want serve, init, hostkey, check, machines-line or ssh-config)\n", args[0])
	return 2
}

// parse parses a subcommand's flags. A usage error is one line naming the
// flag; -h prints the flags.
func parse(fs *flag.FlagSet, args []string, stderr io.Writer) (exit int, ok bool) {
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	err := fs.Parse(args)
	if errors.Is(err, flag.ErrHelp) {
		fs.SetOutput(stderr)
		fmt.Fprintf(stderr, "usage: darling-sshd %s [flags]\n", fs.Name())
		fs.PrintDefaults()
		return 0, false
	}
	if err != nil {
		fmt.Fprintf(stderr, "darling-sshd %s: %v\n", fs.Name(), err)
		return 2, false
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "darling-sshd %s: unexpected argument %q\n", fs.Name(), fs.Arg(0))
		return 2, false
	}
	return 0, true
}

// usageError prints one line naming the flag and returns exit status 2.
func usageError(stderr io.Writer, cmd, flagName string, err error) int {
	fmt.Fprintf(stderr, "darling-sshd %s: invalid value for flag --%s: %v\n", cmd, flagName, err)
	return 2
}

// list splits a comma-separated flag value, dropping empty items.
func list(s string) []string {
	var out []string
	for _, v := range strings.Split(s, ",") {
		if v = strings.TrimSpace(v); v != "" {
			out = append(out, v)
		}
	}
	return out
}

func serve(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
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
	fs.DurationVar(&o.KillGrace, "kill-grace", d.KillGrace, "time between SIGHUP and SIGKILL when a session's processes are ended")
	fs.DurationVar(&o.WarmTimeout, "warm-timeout", d.WarmTimeout, "how long warming the prefix may take")
	fs.DurationVar(&o.LoginGraceTime, "login-grace-time", d.LoginGraceTime, "a connection that has not logged in by then is closed")
	maxStartups := fs.String("max-startups", fmt.Sprintf("%d:%d:%d", d.MaxStartups.Start, d.MaxStartups.Rate, d.MaxStartups.Full), "unauthenticated connections: start:rate:full, as sshd's MaxStartups")
	fs.IntVar(&o.PerSourceMaxStartups, "per-source-max-startups", d.PerSourceMaxStartups, "unauthenticated connections one source (an IPv4 address or IPv6 /64) may have at once; more are dropped, so that one source cannot crowd out the others. The default, half of max-startups' start, lets 32 logins at once from one host (the Nix daemon's parallel builds) through (0: no limit)")
	fs.BoolVar(&o.PerSourceExemptLoopback, "per-source-exempt-loopback", d.PerSourceExemptLoopback, "no per-source limit for 127.0.0.0/8 and ::1 (a local proxy or Nix daemon that opens many connections at once)")
	fs.IntVar(&o.MaxAuthTries, "max-auth-tries", d.MaxAuthTries, "authentication attempts per connection")
	fs.IntVar(&o.MaxSessions, "max-sessions", d.MaxSessions, "sessions open at once per connection")
	fs.IntVar(&o.MaxExec, "max-exec", d.MaxExec, "exec sessions running at once; beyond, they wait their turn (0: no limit; shells and SFTP never wait)")
	fs.DurationVar(&o.KeepaliveInterval, "keepalive-interval", d.KeepaliveInterval, "how often to check that a client is still there (0: never)")
	fs.IntVar(&o.KeepaliveCountMax, "keepalive-count-max", d.KeepaliveCountMax, "unanswered keepalives before a connection is closed")
	fs.StringVar(&o.SessionCgroups, "session-cgroups", d.SessionCgroups, "auto: each session in a cgroup of its own where a writable cgroup v2 is found; off: the marker and parentage tracker only")
	fs.DurationVar(&o.ShutdownGrace, "shutdown-grace", d.ShutdownGrace, "on SIGTERM, how long running sessions may finish before they are ended")
	logLevel := fs.String("log-level", "info", "log level: debug, info, warn or error")
	pprofAddr := fs.String("pprof", "", "serve Go's profiles on this address, e.g. 127.0.0.1:6060 (off when empty)")
	if code, ok := parse(fs, args, stderr); !ok {
		return code
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		return usageError(stderr, "serve", "log-level", err)
	}
	ms, err := sshserver.ParseMaxStartups(*maxStartups)
	if err != nil {
		return usageError(stderr, "serve", "max-startups", err)
	}
	o.MaxStartups, o.AllowUsers, o.AcceptEnv = ms, list(*allowUsers), list(*acceptEnv)
	lf.apply(&o)
	var oe *sshserver.OptionError
	if err := o.Validate(); errors.As(err, &oe) {
		return usageError(stderr, "serve", oe.Flag, oe.Err)
	}
	o.Log = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	return serveWith(o, *pprofAddr)
}

// serveWith applies serve's process-wide settings, then runs the server
// until SIGINT or SIGTERM.
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
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	reload := make(chan os.Signal, 1)
	signal.Notify(reload, syscall.SIGHUP)
	defer signal.Stop(reload)
	o.Reload = reload
	o.Ready = func() { _, _ = daemon.SdNotify(false, daemon.SdNotifyReady) }
	if err := sshserver.Run(ctx, o); err != nil {
		log.Error("darling-sshd serve failed", "err", err)
		return 1
	}
	return 0
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

func initPrefix(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("init", flag.ContinueOnError)
	lf := addLauncherFlags(fs)
	share := fs.Bool("share-store", false, "link the prefix's /nix to the host's store (unsafe for remote builds: both Nix daemons lock the same paths)")
	features := fs.String("system-features", "", "comma-separated system-features for the prefix's nix.conf")
	maxJobs := fs.Int("max-jobs", 4, "max-jobs for the prefix's nix.conf")
	force := fs.Bool("force", false, "overwrite managed files a person edited")
	warmTimeout := fs.Duration("warm-timeout", sshserver.DefaultOptions().WarmTimeout, "how long warming the prefix may take")
	if code, ok := parse(fs, args, stderr); !ok {
		return code
	}
	if *maxJobs < 1 {
		return usageError(stderr, "init", "max-jobs", errors.New("must be at least 1"))
	}
	o := sshserver.DefaultOptions()
	lf.apply(&o)
	o.WarmTimeout = *warmTimeout
	var oe *sshserver.OptionError
	if err := o.Validate(); errors.As(err, &oe) {
		return usageError(stderr, "init", oe.Flag, oe.Err)
	}
	o.Log = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	l, err := sshserver.NewLauncher(o)
	if err != nil {
		fmt.Fprintf(stderr, "darling-sshd init: %v\n", err)
		return 1
	}
	err = l.Init(context.Background(), darlingexec.InitOptions{
		ShareStore: *share, SystemFeatures: list(*features), MaxJobs: *maxJobs, Force: *force,
	}, stdout)
	if err != nil {
		fmt.Fprintf(stderr, "darling-sshd init: %v\n", err)
		return 1
	}
	return 0
}

func hostkey(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("hostkey", flag.ContinueOnError)
	path := fs.String("host-key", sshserver.DefaultOptions().HostKeyPath, "ed25519 host key file, generated if missing")
	format := fs.String("format", "openssh", "output: openssh (the public key line) or base64 (Nix's publicHostKey)")
	if code, ok := parse(fs, args, stderr); !ok {
		return code
	}
	var render func(gossh.PublicKey) string
	switch *format {
	case "openssh":
		render = auth.AuthorizedKeyLine
	case "base64":
		render = auth.PublicHostKeyBase64
	default:
		return usageError(stderr, "hostkey", "format", fmt.Errorf("%q: want openssh or base64", *format))
	}
	signer, err := auth.LoadOrGenerateHostKey(*path)
	if err != nil {
		fmt.Fprintf(stderr, "darling-sshd hostkey: %v\n", err)
		return 1
	}
	fmt.Fprintln(stdout, render(signer.PublicKey()))
	return 0
}

func check(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("check", flag.ContinueOnError)
	listen := fs.String("listen", sshserver.DefaultOptions().Listen, "address of the server (host:port)")
	user := fs.String("user", "root", "login name")
	identity := fs.String("identity", defaultIdentity, "private key to log in with (the Nix daemon's builder key)")
	knownHosts := fs.String("known-hosts", sshserver.DefaultOptions().KnownHostsOut, "known_hosts file that pins the server's host key")
	command := fs.String("command", "nix-store --serve --write", "remote command that speaks Nix's serve protocol")
	timeout := fs.Duration("timeout", 60*time.Second, "bound on the whole check")
	if code, ok := parse(fs, args, stderr); !ok {
		return code
	}
	host, port, err := auth.ClientHost(*listen)
	if err != nil {
		return usageError(stderr, "check", "listen", err)
	}
	if *timeout <= 0 {
		return usageError(stderr, "check", "timeout", errors.New("must be positive"))
	}
	err = sshserver.Check(context.Background(), sshserver.CheckOptions{
		Addr: net.JoinHostPort(host, port), User: *user, Identity: *identity,
		KnownHosts: *knownHosts, Command: *command, Timeout: *timeout, Out: stdout,
	})
	if err != nil {
		return 1
	}
	return 0
}

// builderText prints the machines line or the ssh_config block; both take
// the same flags so that they always describe the same builder.
func builderText(cmd string, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet(cmd, flag.ContinueOnError)
	alias := fs.String("host-alias", sshserver.DefaultOptions().HostAlias, "ssh Host alias and HostKeyAlias the builder is known by")
	protocol := fs.String("protocol", "ssh", "Nix store protocol: ssh (nix-store --serve) or ssh-ng (nix-daemon --stdio)")
	user := fs.String("user", "root", "login name")
	systems := fs.String("systems", "x86_64-darwin", "comma-separated systems the builder builds for")
	identity := fs.String("identity", defaultIdentity, "private key the Nix daemon logs in with")
	maxJobs := fs.Int("max-jobs", 4, "builds the builder runs at once")
	speed := fs.Int("speed-factor", 1, "speed factor relative to other builders")
	supported := fs.String("supported-features", "", "comma-separated supported system features")
	mandatory := fs.String("mandatory-features", "", "comma-separated mandatory system features")
	hostKey := fs.String("host-key", sshserver.DefaultOptions().HostKeyPath, "host key file; publicHostKey comes from its .pub")
	noHostKey := fs.Bool("no-public-host-key", false, "write - for publicHostKey (trust comes from the known hosts file)")
	listen := fs.String("listen", sshserver.DefaultOptions().Listen, "address the server listens on (host:port)")
	knownHosts := fs.String("known-hosts-out", sshserver.DefaultOptions().KnownHostsOut, "known_hosts file the server writes")
	if code, ok := parse(fs, args, stderr); !ok {
		return code
	}
	host, port, err := auth.ClientHost(*listen)
	if err != nil {
		return usageError(stderr, cmd, "listen", err)
	}
	b := auth.Builder{
		Alias: *alias, Protocol: *protocol, User: *user, Systems: list(*systems), Identity: *identity,
		MaxJobs: *maxJobs, SpeedFactor: *speed, SupportedFeatures: list(*supported),
		MandatoryFeatures: list(*mandatory), Host: host, Port: port, KnownHosts: *knownHosts,
	}
	if err := b.Check(); err != nil {
		fmt.Fprintf(stderr, "darling-sshd %s: %v\n", cmd, err)
		return 2
	}
	if cmd == "ssh-config" {
		fmt.Fprint(stdout, b.SSHConfig())
		return 0
	}
	if !*noHostKey {
		pub, err := auth.LoadPublicHostKey(*hostKey)
		if err != nil {
			fmt.Fprintf(stderr, "darling-sshd %s: %v (run serve or hostkey first, or pass --no-public-host-key)\n", cmd, err)
			return 1
		}
		b.PublicHostKey = pub
	}
	fmt.Fprintln(stdout, b.MachinesLine())
	return 0
}
