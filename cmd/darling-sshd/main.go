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
	"os"
	"os/signal"
	"strings"
	"syscall"

	gossh "golang.org/x/crypto/ssh"

	"github.com/darling-sshd/darling-sshd/auth"
	"github.com/darling-sshd/darling-sshd/darlingexec"
	"github.com/darling-sshd/darling-sshd/sshserver"
)

const usage = `usage: darling-sshd <command> [flags]

commands:
  serve     serve SSH sessions inside the Darling prefix
  hostkey   print the host key's public line (generating the key if missing)

Run "darling-sshd <command> -h" for a command's flags.
`

// Defaults shared by several subcommands.
const (
	defaultHostKey = "/var/lib/darling-sshd/ssh_host_ed25519_key"
)

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
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stdout, usage)
		return 0
	}
	fmt.Fprintf(stderr, "darling-sshd: unknown command %q (want serve or hostkey)\n", args[0])
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

func serve(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:2222", "address to listen on (host:port)")
	prefix := fs.String("prefix", "/var/lib/darling-builder/prefix", "Darling prefix the sessions run in (Darling creates it; we never do)")
	darling := fs.String("darling", "darling", "Darling launcher: a path, or a name looked up in PATH")
	style := fs.String("prefix-style", "flag", "how the launcher gets the prefix: flag (--prefix P, plus DPREFIX) or env (DPREFIX only, upstream Darling)")
	hostKey := fs.String("host-key", defaultHostKey, "ed25519 host key file, generated if missing")
	authKeys := fs.String("authorized-keys", "/etc/nix/darling-builder-key.pub", "public key or authorized_keys file of the users allowed in")
	allowUsers := fs.String("allow-users", "root", "comma-separated login names allowed in")
	killGrace := fs.Duration("kill-grace", 5e9, "time between SIGHUP and SIGKILL when a session's processes are ended")
	warmTimeout := fs.Duration("warm-timeout", 60e9, "how long warming the prefix may take")
	logLevel := fs.String("log-level", "info", "log level: debug, info, warn or error")
	if code, ok := parse(fs, args, stderr); !ok {
		return code
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
	if *prefix == "" {
		return usageError(stderr, "serve", "prefix", errors.New("must not be empty"))
	}
	var users []string
	for _, u := range strings.Split(*allowUsers, ",") {
		if u = strings.TrimSpace(u); u != "" {
			users = append(users, u)
		}
	}
	if len(users) == 0 {
		return usageError(stderr, "serve", "allow-users", errors.New("names no user"))
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	err = sshserver.Run(ctx, sshserver.Options{
		Listen:             *listen,
		Prefix:             *prefix,
		Darling:            *darling,
		PrefixStyle:        st,
		HostKeyPath:        *hostKey,
		AuthorizedKeysPath: *authKeys,
		AllowUsers:         users,
		KillGrace:          *killGrace,
		WarmTimeout:        *warmTimeout,
		Log:                log,
	})
	if err != nil {
		log.Error("darling-sshd serve failed", "err", err)
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
