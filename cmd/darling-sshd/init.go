package main

import (
	"context"
	"errors"
	"flag"
	"io"
	"log/slog"

	"github.com/darling-sshd/darling-sshd/darlingexec"
	"github.com/darling-sshd/darling-sshd/sshserver"
)

func initCmd(fs *flag.FlagSet) action {
	lf := addLauncherFlags(fs)
	share := fs.Bool("share-store", false, "link the prefix's /nix to the host's store (unsafe for remote builds: both Nix daemons lock the same paths)")
	features := fs.String("system-features", "", "comma-separated system-features for the prefix's nix.conf")
	maxJobs := fs.Int("max-jobs", 4, "max-jobs for the prefix's nix.conf")
	force := fs.Bool("force", false, "overwrite managed files a person edited")
	warmTimeout := fs.Duration("warm-timeout", sshserver.DefaultOptions().WarmTimeout, "how long warming the prefix may take")
	return func(stdout, stderr io.Writer) int {
		if *maxJobs < 1 {
			return flagError(stderr, "init", "max-jobs", errors.New("must be at least 1"))
		}
		o := sshserver.DefaultOptions()
		lf.apply(&o)
		o.WarmTimeout = *warmTimeout
		var oe *sshserver.OptionError
		if err := o.Validate(); errors.As(err, &oe) {
			return flagError(stderr, "init", oe.Flag, oe.Err)
		}
		o.Log = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
		l, err := sshserver.NewLauncher(o)
		if err != nil {
			return failed(stderr, "init", err)
		}
		err = l.Init(context.Background(), darlingexec.InitOptions{
			ShareStore: *share, SystemFeatures: list(*features), MaxJobs: *maxJobs, Force: *force,
		}, stdout)
		if err != nil {
			return failed(stderr, "init", err)
		}
		return 0
	}
}
