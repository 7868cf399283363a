package darlingexec

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
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

// processAlive reports whether pid names a process that has not exited. A
// zombie has exited: a container killed by `darling shutdown` can linger as
// one under an init that does not reap.
func processAlive(pid int) bool {
	_, ok := statOf(pid)
	return ok
}

// EnsureWarm warms the prefix unless its container is running. Callers
// queue behind a warm-up in progress, so there is one at a time; for a
// short while after a warm-up failed, callers get its error at once
// rather than each waiting out a warm-up of their own.
func (l *Launcher) EnsureWarm(ctx context.Context) error {
	l.warmMu.Lock()
	defer l.warmMu.Unlock()
	_, err := l.ensureWarmLocked(ctx)
	return err
}

// ensureWarmLocked is EnsureWarm with warmMu held. It returns the
// container found running or started, or the zero container if none could
// be verified.
func (l *Launcher) ensureWarmLocked(ctx context.Context) (container, error) {
	if c := l.verified(); c.pid != 0 {
		l.repairInitPid(c.pid)
		return c, nil
	}
	if l.warmErr != nil && time.Since(l.warmFailed) < warmRetryAfter {
		return container{}, l.warmErr
	}
	if err := l.warmLocked(ctx); err != nil {
		return container{}, err
	}
	return l.verified(), nil
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
	l.awaitReaped()
	fail := func(err error) error { return fmt.Errorf("warm prefix %s with %s: %w", l.Prefix, l.Path, err) }
	log, err := l.openLauncherLog()
	if err != nil {
		return fail(err)
	}
	defer log.Close()
	cold := l.containerPid() == 0
	err = l.probe(ctx, log)
	if err != nil && cold && l.containerPid() != 0 {
		// A cold start can fail on its own although the container came
		// up: Darling's launcher waits for the shellspawn socket to
		// exist, not to listen, and may connect in between ("Connection
		// refused"). A second launcher finds the container ready.
		l.Log.Warn("the launcher that started the prefix's container failed; trying once more, now that the container runs", "err", err)
		err = l.probe(ctx, log)
	}
	if err != nil {
		return fail(err)
	}
	c := l.verified()
	if cold && c.pid != 0 {
		l.contMu.Lock()
		l.ours = c
		l.contMu.Unlock()
	}
	if c.pid == 0 {
		l.Log.Warn("no running container found for the prefix; sessions will warm it first each time, and SFTP serves the prefix folder as the host sees it",
			"prefix", l.Prefix, "pidfile", filepath.Join(l.Prefix, initPidFile))
	}
	l.Log.Info("prefix warm", "prefix", l.Prefix, "took", time.Since(start).Round(time.Millisecond))
	if l.pool != nil {
		l.pool.wake()
	}
	return nil
}

// probe runs a new probe command through the launcher and checks what it
// printed.
func (l *Launcher) probe(ctx context.Context, log *os.File) error {
	probe, err := newProbe()
	if err != nil {
		return err
	}
	code, err := l.runProbe(ctx, probe, log)
	if err != nil {
		return withOutput(err, log)
	}
	return l.checkProbe(probe, code, log)
}

// runProbe runs the probe command through the launcher and returns its
// exit code. A launcher that does not answer within WarmTimeout, or by
// the time ctx is done, is killed with its process group.
func (l *Launcher) runProbe(ctx context.Context, probe probe, log *os.File) (int, error) {
	req := Request{Command: probe.command()}
	cmd := exec.Command(l.Path, l.Args(req, "")...)
	cmd.Env = append(l.Env(req, ""), probeVar+"="+probe.value)
	cmd.Dir = "/"
	// Upstream's launcher says what it refuses on stdout, and a cold
	// start hands stdout and stderr to the container for good (#1510):
	// both go to the launcher log, never to a pipe nobody reads later.
	cmd.Stdout, cmd.Stderr = log, log
	// A cold start leaves the container in the launcher's session and
	// process group: a session of its own keeps it clear of the server's
	// terminal (make run) and of signals to the server's group.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return -1, fmt.Errorf("start launcher: %w", err)
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
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, nil
	case errors.As(err, &ee) && ee.Exited():
		return ee.ExitCode(), nil
	}
	_ = unix.Kill(-cmd.Process.Pid, unix.SIGKILL)
	select {
	case <-done:
	case <-time.After(time.Second):
	}
	return -1, err
}

// awaitReaped waits a little for a container that was just killed to be
// reaped. `darling shutdown` SIGKILLs it without waiting, and until its
// parent reaps it Darling's launcher takes the zombie for a running
// container and fails to join its namespace. Nothing signals another
// process's reaping, so this polls, briefly.
func (l *Launcher) awaitReaped() {
	pid, err := readInitPid(l.Prefix)
	if err != nil || pid == 0 {
		return
	}
	for deadline := time.Now().Add(reapWait); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		if err != nil {
			return // gone
		}
		if _, live := parseStat(b); live {
			return // running: not ours to wait for
		}
	}
	l.Log.Warn("the prefix's dead container is not reaped; the launcher may take it for running", "prefix", l.Prefix, "pid", pid)
}

// reapWait bounds awaitReaped.
const reapWait = 2 * time.Second

// MinDarling is the oldest Darling release with what the server relies
// on: the caller's environment forwarded to the command (894d62c,
// 2023-05), which ending a session's processes depends on, and exit
// statuses reported correctly (980a02f, 2025-01, #1546).
const MinDarling = "v0.1.20251023"

// probeVar carries the warm-up's random value to its command.
const probeVar = "DARLING_SSHD_PROBE"

// The warm-up command's exit statuses: the launcher must report them.
const (
	probeStatus  = 42 // all went well
	probeNoWrite = 43 // the probe file could not be written (a full disk)
	probeNoEnv   = 44 // the variable the server set did not arrive
)

// probe is the warm-up's self-test. Its command checks that a variable
// the server set arrived with its random value (only the environment
// carries it), writes a file with a random name at the root of its own
// view, and exits 42. Finding that file in the prefix's view, and the
// statuses the command chose, show that the launcher ran the command in
// the prefix, forwarded the environment and reports exit statuses.
type probe struct{ name, value string }

func newProbe() (probe, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return probe{}, fmt.Errorf("probe: %w", err)
	}
	h := hex.EncodeToString(b[:])
	return probe{name: ".darling-sshd-probe-" + h[:16], value: h[16:]}, nil
}

func (p probe) command() string {
	return fmt.Sprintf(`[ "$%s" = %s ] || exit %d; : > /%s || exit %d; exit %d`,
		probeVar, p.value, probeNoEnv, p.name, probeNoWrite, probeStatus)
}

// checkProbe looks for the probe's file in the prefix's view, removes it,
// and says in one line what the launcher did not do.
func (l *Launcher) checkProbe(p probe, code int, log *os.File) error {
	switch code {
	case probeNoEnv:
		return fmt.Errorf("the launcher does not pass the environment to the command (%s did not arrive), which ending a session's processes depends on; darling-sshd needs Darling %s or later",
			probeVar, MinDarling)
	case probeNoWrite:
		l.Log.Warn("the warm-up could not write its probe file in the prefix (is its disk full?); the launcher is not proven to run commands in the prefix",
			"prefix", l.Prefix)
		return nil
	}
	view, viaContainer, err := l.openView()
	if errors.Is(err, unix.ENOENT) && code == probeStatus {
		return fmt.Errorf("the launcher did not run the command in the prefix (%s does not exist after it ran); darling-sshd needs Darling %s or later",
			l.Prefix, MinDarling)
	}
	if err != nil {
		return withOutput(fmt.Errorf("launcher exited with status %d%s, and %w", code, l.styleHint(log), err), log)
	}
	defer unix.Close(view)
	_, rerr := readSmallFile(view, p.name, 0)
	found := rerr == nil
	if !errors.Is(rerr, unix.ENOENT) {
		_ = unix.Unlinkat(view, p.name, 0)
	}
	where := "the prefix folder"
	if viaContainer {
		where = "the container's view of the prefix"
	}
	switch {
	case found && code == probeStatus:
		return nil
	case found:
		return fmt.Errorf("the launcher reported exit status %d for a command that exited %d; darling-sshd needs Darling %s or later (#1546)",
			code, probeStatus, MinDarling)
	case code == probeStatus:
		return fmt.Errorf("the launcher did not run the command in the prefix (no probe file in %s: %v); darling-sshd needs Darling %s or later",
			where, rerr, MinDarling)
	}
	return withOutput(fmt.Errorf("launcher exited with status %d%s", code, l.styleHint(log)), log)
}

// styleHint says which --prefix-style to use when the launcher refused
// its first argument, as upstream's does `--prefix`.
func (l *Launcher) styleHint(log *os.File) string {
	out := readLog(log)
	if !strings.Contains(out, "is not a supported command") {
		return ""
	}
	if l.Style == StyleFlag {
		return ": the launcher has no --prefix option (upstream Darling takes the prefix from DPREFIX only): use --prefix-style env"
	}
	return ": the launcher does not know the shell command: is it Darling's launcher?"
}

// maxLauncherOutput bounds how much of the launcher's output an error
// shows: its first and last halves, as the decisive line often comes last.
const maxLauncherOutput = 16 << 10

// readLog returns the launcher log, whole up to maxLauncherOutput bytes,
// else its beginning and its end.
func readLog(log *os.File) string {
	var size int64
	if st, err := log.Stat(); err == nil && st.Mode().IsRegular() {
		size = st.Size()
	}
	half := int64(maxLauncherOutput / 2)
	read := func(off, n int64) string {
		b := make([]byte, n)
		m, _ := log.ReadAt(b, off)
		return string(b[:m])
	}
	var out string
	if size <= 2*half {
		out = read(0, 2*half)
	} else {
		out = read(0, half) + fmt.Sprintf("\n[… %d bytes left out …]\n", size-2*half) + read(size-half, half)
	}
	return strings.ToValidUTF8(strings.TrimSpace(out), "?")
}

// withOutput adds what the launcher printed, whole up to a bound, to err.
func withOutput(err error, log *os.File) error {
	if log.Name() == os.DevNull {
		return fmt.Errorf("%w (its output was not kept: see the warning about the launcher log)", err)
	}
	out := readLog(log)
	if out == "" {
		return fmt.Errorf("%w (it printed nothing)", err)
	}
	return fmt.Errorf("%w; the launcher printed:\n%s", err, indent(out))
}

func indent(s string) string {
	return "    " + strings.ReplaceAll(s, "\n", "\n    ")
}

// openLauncherLog opens the file the warm-up's launcher writes its stdout
// and stderr to, emptied first. A container the warm-up starts keeps both
// for as long as it runs (Darling #1510), so it is a file the operator can
// read, not a pipe or a deleted temporary file. Without a LogPath, it is
// P.launcher.log beside the prefix, as Darling keeps P.workdir. What is
// read of it is bounded; what a running container appends later is
// Darling's own output.
func (l *Launcher) openLauncherLog() (*os.File, error) {
	path := l.LogPath
	if path == "" {
		path = l.Prefix + ".launcher.log"
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC|os.O_APPEND|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		// The warm-up can still prove the launcher; only its output,
		// which an error would show, is lost.
		l.Log.Warn("launcher output not kept", "err", err)
		return os.OpenFile(os.DevNull, os.O_RDWR, 0)
	}
	return f, nil
}

// PrefixRoot opens the prefix as its own processes see it, warming the
// container first if it is not running. Darling mounts an overlay over the
// prefix inside the container's mount namespace; from the host the prefix
// folder holds only the overlay's upper layer, and changing it behind the
// mounted overlay is undefined. So the merged view is opened through the
// verified container (see openContainerView). Only when no container is
// found is the prefix folder itself used.
func (l *Launcher) PrefixRoot(ctx context.Context) (*os.File, error) {
	if err := l.EnsureWarm(ctx); err != nil {
		return nil, err
	}
	fd, viaContainer, err := l.openView()
	if err != nil {
		return nil, err
	}
	if !viaContainer {
		l.Log.Warn("no container found; serving the prefix folder as the host sees it", "prefix", l.Prefix)
	}
	return os.NewFile(uintptr(fd), l.Prefix), nil
}

// ContainerGone reports whether the prefix's container is gone, or goes
// within d: Darling's launcher exits (1, without a word) as soon as its
// connection to the container breaks, which is as the container's
// processes die, while darlingserver may take a moment longer to leave
// /proc.
func (l *Launcher) ContainerGone(ctx context.Context, d time.Duration) bool {
	c := l.verified()
	return c.pid == 0 || exitsWithin(ctx, c.pid, c.start, d)
}

// Shutdown runs the launcher's shutdown for the prefix if the container
// running now is one a warm-up of this Launcher started; a container
// someone else started (another server on the same prefix, a person's
// `darling shell`) is left alone. It reports whether it ran shutdown.
func (l *Launcher) Shutdown(ctx context.Context) (bool, error) {
	l.contMu.Lock()
	ours := l.ours
	l.contMu.Unlock()
	if ours.pid == 0 || l.verified() != ours {
		return false, nil
	}
	ctx, cancel := context.WithTimeout(ctx, l.WarmTimeout)
	defer cancel()
	var args []string
	if l.Style == StyleFlag {
		args = append(args, "--prefix", l.Prefix)
	}
	cmd := exec.CommandContext(ctx, l.Path, append(args, "shutdown")...)
	cmd.Env = append(append([]string(nil), l.HostEnv...), "DPREFIX="+l.Prefix)
	cmd.WaitDelay = time.Second // a child that keeps the output open is not waited for
	if out, err := cmd.CombinedOutput(); err != nil {
		return true, fmt.Errorf("%s shutdown for %s: %w: %s", l.Path, l.Prefix, err, bytes.TrimSpace(out))
	}
	return true, nil
}
