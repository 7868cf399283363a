package main

import (
	"context"
	"errors"
	"flag"
	"io"
	"time"

	"github.com/darling-sshd/darling-sshd/sshserver"
)

func checkCmd(fs *flag.FlagSet) action {
	var o sshserver.CheckOptions
	fs.StringVar(&o.Alias, "host-alias", sshserver.DefaultOptions().HostAlias, "the alias Nix knows the builder by, as register wrote it")
	fs.StringVar(&o.Machines, "machines", defaultMachines, "Nix's machines file: the alias's line gives the key and host key Nix passes to ssh")
	fs.StringVar(&o.SSHConfig, "ssh-config", "", "ssh configuration file to use instead of ssh's own (ssh -F), where register wrote elsewhere")
	fs.StringVar(&o.ServeCommand, "command", "nix-store --serve --write", "remote command for the serve protocol (ssh://), as Nix's remote-program makes it")
	fs.StringVar(&o.DaemonCommand, "daemon-command", "nix-daemon --stdio", "remote command for the daemon protocol (ssh-ng://)")
	fs.DurationVar(&o.Timeout, "timeout", 60*time.Second, "bound on the whole check")
	return func(stdout, stderr io.Writer) int {
		if o.Timeout <= 0 {
			return flagError(stderr, "check", "timeout", errors.New("must be positive"))
		}
		o.Out = stdout
		if err := sshserver.Check(context.Background(), o); err != nil {
			return 1
		}
		return 0
	}
}
