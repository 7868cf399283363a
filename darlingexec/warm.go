package darlingexec

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// containerPid returns the pid recorded in P/.init.pid if that process is
// alive, else 0.
func (l *Launcher) containerPid() int {
	b, err := os.ReadFile(filepath.Join(l.Prefix, ".init.pid"))
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0
	}
	if !processAlive(pid) {
		return 0
	}
	return pid
}

// processAlive reports whether pid names a process that has not exited. A
// zombie has exited: a container killed by `darling shutdown` can linger as
// one under an init that does not reap.
func processAlive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	_, ok := parseStat(b)
	return ok
}

// EnsureWarm warms the prefix unless its container is running. Callers
// queue behind a warm-up in progress, so there is one at a time.
func (l *Launcher) EnsureWarm(ctx context.Context) error {
	l.warmMu.Lock()
	defer l.warmMu.Unlock()
	if l.containerPid() != 0 {
		return nil
	}
	return l.warmLocked(ctx)
}

// Warm starts the prefix's container by running a trivial command through
// the launcher with stdin, stdout and stderr on /dev/null. A cold Darling
// start hands the caller's stdio to the container, which prints to stdout
// and never closes it (Darling #1510); done here, that stdio is /dev/null
// and no session ever sees it.
func (l *Launcher) Warm(ctx context.Context) error {
	l.warmMu.Lock()
	defer l.warmMu.Unlock()
	return l.warmLocked(ctx)
}

func (l *Launcher) warmLocked(ctx context.Context) error {
	start := time.Now()
	req := Request{Command: "true"}
	cmd := exec.Command(l.Path, l.Args(req, "")...)
	cmd.Env = l.Env(req, "")
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("warm prefix %s: start launcher %s: %w", l.Prefix, l.Path, err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	timer := time.NewTimer(l.WarmTimeout)
	defer timer.Stop()
	var err error
	select {
	case err = <-done:
	case <-timer.C:
		err = fmt.Errorf("no answer within %s", l.WarmTimeout)
	case <-ctx.Done():
		err = ctx.Err()
	}
	if err != nil {
		_ = unix.Kill(-cmd.Process.Pid, unix.SIGKILL)
		select {
		case <-done:
		case <-time.After(time.Second):
		}
		return fmt.Errorf("warm prefix %s with %s: %w", l.Prefix, l.Path, err)
	}
	if l.containerPid() == 0 {
		l.Log.Warn("launcher left no live container pid; sessions will warm the prefix first each time",
			"prefix", l.Prefix, "pidfile", filepath.Join(l.Prefix, ".init.pid"))
	}
	l.Log.Info("prefix warm", "prefix", l.Prefix, "took", time.Since(start).Round(time.Millisecond))
	return nil
}
