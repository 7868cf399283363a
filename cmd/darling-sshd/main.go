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
	defaultListen     = "127.0.0.1:2222"
	defaultHostKey    = "/var/lib/darling-sshd/ssh_host_ed25519_key"
	defaultKnownHosts = "/var/lib/darling-sshd/known_hosts"
	defaultIdentity   = "/etc/nix/darling-builder-key"
	defaultAlias      = "darling-builder"
	defaultPrefix     = "/var/lib/darling-builder/prefix"
)

// serveGCPercent is serve's garbage collection target unless GOGC is set.
// Collections are cheap for this server: its live heap is a few MB, and
// received packets and copy buffers come from pools, so a GiB moved
// allocates 2 to 12 MB. A low target keeps garbage, and goroutine stacks
// grown during a login (the runtime shrinks them only at a collection),
// from sitting in memory: an idle session costs 82 KiB instead of 98, for
// no server CPU that 200 logins or 1 GiB uploads could tell apart.
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
	listen := fs.String("listen", defaultListen, "address to listen on (host:port)")
	lf := addLauncherFlags(fs)
	prefix, darling, style, launcherLog := lf.prefix, lf.darling, lf.style, lf.log
	hostKey := fs.String("host-key", defaultHostKey, "ed25519 host key file, generated if missing")
	authKeys := fs.String("authorized-keys", "/etc/nix/darling-builder-key.pub", "public key or authorized_keys file of the users allowed in")
	allowUsers := fs.String("allow-users", "root", "comma-separated login names allowed in")
	acceptEnv := fs.String("accept-env", "", "comma-separated names or globs of variables clients may set, beyond "+strings.Join(sshserver.DefaultAcceptEnv(), ","))
	knownHosts := fs.String("known-hosts-out", defaultKnownHosts, "known_hosts file to write for the host key (empty: none)")
	alias := fs.String("host-alias", defaultAlias, "host alias the known_hosts file names, as ssh-config's HostKeyAlias")
	killGrace := fs.Duration("kill-grace", 5*time.Second, "time between SIGHUP and SIGKILL when a session's processes are ended")
	warmTimeout := fs.Duration("warm-timeout", 60*time.Second, "how long warming the prefix may take")
	loginGrace := fs.Duration("login-grace-time", 30*time.Second, "a connection that has not logged in by then is closed")
	maxStartups := fs.String("max-startups", "64:30:256", "unauthenticated connections: start:rate:full, as sshd's MaxStartups")
	maxAuthTries := fs.Int("max-auth-tries", 6, "authentication attempts per connection")
	maxSessions := fs.Int("max-sessions", 10, "sessions open at once per connection")
	maxExec := fs.Int("max-exec", 0, "exec sessions running at once; beyond, they wait their turn (0: no limit; shells and SFTP never wait)")
	keepaliveInterval := fs.Duration("keepalive-interval", 15*time.Second, "how often to check that a client is still there (0: never)")
	keepaliveCountMax := fs.Int("keepalive-count-max", 3, "unanswered keepalives before a connection is closed")
	shutdownGrace := fs.Duration("shutdown-grace", 30*time.Second, "on SIGTERM, how long running sessions may finish before they are ended")
	logLevel := fs.String("log-level", "info", "log level: debug, info, warn or error")
	pprofAddr := fs.String("pprof", "", "serve Go's profiles on this address, e.g. 127.0.0.1:6060 (off when empty)")
	if code, ok := parse(fs, args, stderr); !ok {
		return code
	}
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(serveGCPercent)
	}
	st, err := darlingexec.ParseStyle(*style)
	if err != nil {
		return usageError(stderr, "serve", "prefix-style", err)
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		return usageError(stderr, "serve", "log-level", err)
	}
	if *killGrace < 0 {
		return usageError(stderr, "serve", "kill-grace", errors.New("must not be negative"))
	}
	if *warmTimeout <= 0 {
		return usageError(stderr, "serve", "warm-timeout", errors.New("must be positive"))
	}
	ms, err := sshserver.ParseMaxStartups(*maxStartups)
	if err != nil {
		return usageError(stderr, "serve", "max-startups", err)
	}
	for _, f := range []struct {
		name string
		v    int
		min  int
	}{{"max-auth-tries", *maxAuthTries, 1}, {"max-sessions", *maxSessions, 1}, {"max-exec", *maxExec, 0}, {"keepalive-count-max", *keepaliveCountMax, 1}} {
		if f.v < f.min {
			return usageError(stderr, "serve", f.name, fmt.Errorf("must be at least %d", f.min))
		}
	}
	if *keepaliveInterval < 0 {
		return usageError(stderr, "serve", "keepalive-interval", errors.New("must not be negative"))
	}
	if *shutdownGrace < 0 {
		return usageError(stderr, "serve", "shutdown-grace", errors.New("must not be negative"))
	}
	if *loginGrace <= 0 {
		return usageError(stderr, "serve", "login-grace-time", errors.New("must be positive"))
	}
	if *prefix == "" {
		return usageError(stderr, "serve", "prefix", errors.New("must not be empty"))
	}
	users := list(*allowUsers)
	if len(users) == 0 {
		return usageError(stderr, "serve", "allow-users", errors.New("names no user"))
	}
	envs := list(*acceptEnv)
	for _, p := range envs {
		if err := sshserver.CheckEnvPattern(p); err != nil {
			return usageError(stderr, "serve", "accept-env", err)
		}
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	reload := make(chan os.Signal, 1)
	signal.Notify(reload, syscall.SIGHUP)
	err = sshserver.Run(ctx, sshserver.Options{
		Listen:             *listen,
		Prefix:             *prefix,
		Darling:            *darling,
		PrefixStyle:        st,
		LauncherLog:        *launcherLog,
		HostKeyPath:        *hostKey,
		AuthorizedKeysPath: *authKeys,
		AllowUsers:         users,
		AcceptEnv:          envs,
		KillGrace:          *killGrace,
		WarmTimeout:        *warmTimeout,
		LoginGraceTime:     *loginGrace,
		ShutdownGrace:      *shutdownGrace,
		MaxStartups:        ms,
		MaxAuthTries:       *maxAuthTries,
		MaxSessions:        *maxSessions,
		MaxExec:            *maxExec,
		KeepaliveInterval:  *keepaliveInterval,
		KeepaliveCountMax:  *keepaliveCountMax,
		PprofAddr:          *pprofAddr,
		Reload:             reload,
		Ready:              func() { _, _ = daemon.SdNotify(false, daemon.SdNotifyReady) },
		KnownHostsOut:      *knownHosts,
		HostAlias:          *alias,
		Log:                log,
	})
	if err != nil {
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
	return launcherFlags{
		prefix:  fs.String("prefix", defaultPrefix, "Darling prefix the sessions run in (Darling creates it; we never do)"),
		darling: fs.String("darling", "darling", "Darling launcher: a path, or a name looked up in PATH"),
		style:   fs.String("prefix-style", string(darlingexec.DefaultStyle), "how the launcher gets the prefix: env (DPREFIX only, as upstream Darling takes it) or flag (--prefix P plus DPREFIX, for a wrapper that wants it)"),
		log:     fs.String("launcher-log", "", "file the warm-up's launcher, and a container it starts, write their output to (default: the prefix path + .launcher.log)"),
	}
}

func initPrefix(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("init", flag.ContinueOnError)
	lf := addLauncherFlags(fs)
	share := fs.Bool("share-store", false, "link the prefix's /nix to the host's store (unsafe for remote builds: both Nix daemons lock the same paths)")
	features := fs.String("system-features", "", "comma-separated system-features for the prefix's nix.conf")
	maxJobs := fs.Int("max-jobs", 4, "max-jobs for the prefix's nix.conf")
	force := fs.Bool("force", false, "overwrite managed files a person edited")
	warmTimeout := fs.Duration("warm-timeout", 60*time.Second, "how long warming the prefix may take")
	if code, ok := parse(fs, args, stderr); !ok {
		return code
	}
	st, err := darlingexec.ParseStyle(*lf.style)
	if err != nil {
		return usageError(stderr, "init", "prefix-style", err)
	}
	if *maxJobs < 1 {
		return usageError(stderr, "init", "max-jobs", errors.New("must be at least 1"))
	}
	l, err := sshserver.NewLauncher(*lf.darling, *lf.prefix, st, *lf.log, *warmTimeout,
		slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
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
	path := fs.String("host-key", defaultHostKey, "ed25519 host key file, generated if missing")
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
	listen := fs.String("listen", defaultListen, "address of the server (host:port)")
	user := fs.String("user", "root", "login name")
	identity := fs.String("identity", defaultIdentity, "private key to log in with (the Nix daemon's builder key)")
	knownHosts := fs.String("known-hosts", defaultKnownHosts, "known_hosts file that pins the server's host key")
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
	alias := fs.String("host-alias", defaultAlias, "ssh Host alias and HostKeyAlias the builder is known by")
	protocol := fs.String("protocol", "ssh", "Nix store protocol: ssh (nix-store --serve) or ssh-ng (nix-daemon --stdio)")
	user := fs.String("user", "root", "login name")
	systems := fs.String("systems", "x86_64-darwin", "comma-separated systems the builder builds for")
	identity := fs.String("identity", defaultIdentity, "private key the Nix daemon logs in with")
	maxJobs := fs.Int("max-jobs", 4, "builds the builder runs at once")
	speed := fs.Int("speed-factor", 1, "speed factor relative to other builders")
	supported := fs.String("supported-features", "", "comma-separated supported system features")
	mandatory := fs.String("mandatory-features", "", "comma-separated mandatory system features")
	hostKey := fs.String("host-key", defaultHostKey, "host key file; publicHostKey comes from its .pub")
	noHostKey := fs.Bool("no-public-host-key", false, "write - for publicHostKey (trust comes from the known hosts file)")
	listen := fs.String("listen", defaultListen, "address the server listens on (host:port)")
	knownHosts := fs.String("known-hosts-out", defaultKnownHosts, "known_hosts file the server writes")
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
