package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"strings"

	"github.com/darling-sshd/darling-sshd/darlingexec"
	"github.com/darling-sshd/darling-sshd/sshserver"
)

func initCmd(fs *flag.FlagSet) action {
	lf := addLauncherFlags(fs)
	share := fs.Bool("share-store", false, "link the prefix's /nix to the host's store (unsafe for remote builds: both Nix daemons lock the same paths)")
	features := fs.String("system-features", "", "comma-separated system-features for the prefix's nix.conf")
	maxJobs := fs.Int("max-jobs", 4, "max-jobs for the prefix's nix.conf")
	var nixConf nixConfFlag
	fs.Var(&nixConf, "nix-conf", "add the setting `KEY=VALUE` to the prefix's nix.conf, after init's own (repeatable, a key at most once; min-free and max-free replace init's; keys init sets itself are refused)")
	force := fs.Bool("force", false, "overwrite managed files a person edited")
	stop := fs.Bool("stop-container", false, "when done, stop the prefix's container if init started it (one found running is left alone)")
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
		ctx := context.Background()
		err = l.Init(ctx, darlingexec.InitOptions{
			ShareStore: *share, SystemFeatures: list(*features), MaxJobs: *maxJobs,
			NixConf: nixConf, Force: *force,
		}, stdout)
		if *stop {
			stopContainer(ctx, l, stdout, stderr)
		}
		if err != nil {
			return failed(stderr, "init", err)
		}
		return 0
	}
}

// stopContainer stops the prefix's container if init's warm-up started
// it, so that a container init cold-started for its few commands does not
// outlive it (a server started next warms its own, and may stop it on
// exit). A failure to stop is a warning: init's work is done either way.
func stopContainer(ctx context.Context, l *darlingexec.Launcher, stdout, stderr io.Writer) {
	stopped, err := l.Shutdown(ctx)
	switch {
	case err != nil:
		fmt.Fprintf(stderr, "darling-sshd init: warning: stopping the prefix's container: %v\n", err)
	case stopped:
		fmt.Fprintln(stdout, "container: stopped (init had started it)")
	default:
		fmt.Fprintln(stdout, "container: left running (init did not start it)")
	}
}

// nixConfFlag collects --nix-conf settings, each checked as it is given,
// so that a bad one is a usage error naming it. A key given twice is
// refused rather than the last taking effect: for an extra- list setting
// both values may have been meant, and the flag cannot tell.
type nixConfFlag []darlingexec.NixSetting

func (f *nixConfFlag) String() string {
	s := make([]string, len(*f))
	for i, v := range *f {
		s[i] = v.String()
	}
	return strings.Join(s, " ")
}

func (f *nixConfFlag) Set(v string) error {
	s, err := darlingexec.ParseNixSetting(v)
	if err != nil {
		return err
	}
	for _, have := range *f {
		if have.Key == s.Key {
			return fmt.Errorf("%s given twice; give it once (a list's items separated by spaces)", s.Key)
		}
	}
	*f = append(*f, s)
	return nil
}
