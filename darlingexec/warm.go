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
	if !processAlive(pid) || !ownMountNamespace(pid) {
		return 0
	}
	return pid
}

// ownMountNamespace reports whether pid lives in a mount namespace other
// than ours, as Darling's container does: a stale .init.pid whose number
// was reused by an unrelated process is not taken for the container. If
// the namespaces cannot be read, liveness alone decides.
func ownMountNamespace(pid int) bool {
	theirs, err1 := os.Readlink("/proc/" + strconv.Itoa(pid) + "/ns/mnt")
	ours, err2 := os.Readlink("/proc/self/ns/mnt")
	return err1 != nil || err2 != nil || theirs != ours
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
// queue behind a warm-up in progress, so there is one at a time; for a
// short while after a warm-up failed, callers get its error at once
// rather than each waiting out a warm-up of their own.
func (l *Launcher) EnsureWarm(ctx context.Context) error {
	l.warmMu.Lock()
	defer l.warmMu.Unlock()
	if l.containerPid() != 0 {
		return nil
	}
	if l.warmErr != nil && time.Since(l.warmFailed) < warmRetryAfter {
		return l.warmErr
	}
	return l.warmLocked(ctx)
}

// warmRetryAfter is how long a failed warm-up answers for the next ones.
const warmRetryAfter = 5 * time.Second

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
	err := l.warm(ctx)
	l.warmErr, l.warmFailed = err, time.Now()
	return err
}

func (l *Launcher) warm(ctx context.Context) error {
	start := time.Now()
	// The launcher's stderr goes to a file, not a pipe: after a cold start
	// the container may hold it open. Its last line says why a warm-up
	// failed.
	errFile, err := os.CreateTemp("", "darling-sshd-warm-*.log")
	if err != nil {
		return fmt.Errorf("warm prefix %s: %w", l.Prefix, err)
	}
	os.Remove(errFile.Name())
	defer errFile.Close()
	req := Request{Command: "true"}
	cmd := exec.Command(l.Path, l.Args(req, "")...)
	cmd.Env = l.Env(req, "")
	cmd.Dir = "/"
	cmd.Stderr = errFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("warm prefix %s: start launcher %s: %w", l.Prefix, l.Path, err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	timer := time.NewTimer(l.WarmTimeout)
	defer timer.Stop()
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
		if last := lastLine(errFile); last != "" {
			err = fmt.Errorf("%w: %s", err, last)
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

// lastLine returns the last non-empty line of f's first 64 KiB.
func lastLine(f *os.File) string {
	b := make([]byte, 64*1024)
	n, _ := f.ReadAt(b, 0)
	lines := strings.Split(strings.TrimSpace(string(b[:n])), "\n")
	return strings.TrimSpace(lines[len(lines)-1])
}

// PrefixRoot opens the prefix as its own processes see it, warming the
// container first if it is not running. Darling mounts an overlay over the
// prefix inside the container's mount namespace; from the host the prefix
// folder holds only the overlay's upper layer, and changing it behind the
// mounted overlay is undefined. So the merged view is opened through the
// container's namespace, /proc/<pid>/root + prefix. Only when the launcher
// records no container pid is the prefix folder itself used.
func (l *Launcher) PrefixRoot(ctx context.Context) (*os.File, error) {
	if err := l.EnsureWarm(ctx); err != nil {
		return nil, err
	}
	path := l.Prefix
	if pid := l.containerPid(); pid != 0 {
		path = "/proc/" + strconv.Itoa(pid) + "/root" + l.Prefix
	} else {
		l.Log.Warn("no container pid; serving the prefix folder as the host sees it", "prefix", l.Prefix)
	}
	fd, err := unix.Open(path, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open prefix %s: %w", path, err)
	}
	return os.NewFile(uintptr(fd), l.Prefix), nil
}

// ContainerRunning reports whether the prefix's container is running.
func (l *Launcher) ContainerRunning() bool { return l.containerPid() != 0 }
