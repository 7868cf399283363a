package main

import (
	"context"
	"errors"
	"flag"
	"io"
	"net"
	"time"

	"github.com/darling-sshd/darling-sshd/auth"
	"github.com/darling-sshd/darling-sshd/sshserver"
)

func checkCmd(fs *flag.FlagSet) action {
	listen := fs.String("listen", sshserver.DefaultOptions().Listen, "address of the server (host:port)")
	user := fs.String("user", "root", "login name")
	identity := fs.String("identity", defaultIdentity, "private key to log in with (the Nix daemon's builder key)")
	knownHosts := fs.String("known-hosts", sshserver.DefaultOptions().KnownHostsOut, "known_hosts file that pins the server's host key")
	command := fs.String("command", "nix-store --serve --write", "remote command that speaks Nix's serve protocol")
	timeout := fs.Duration("timeout", 60*time.Second, "bound on the whole check")
	return func(stdout, stderr io.Writer) int {
		host, port, err := auth.ClientHost(*listen)
		if err != nil {
			return flagError(stderr, "check", "listen", err)
		}
		if *timeout <= 0 {
			return flagError(stderr, "check", "timeout", errors.New("must be positive"))
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
}
