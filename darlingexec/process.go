package darlingexec

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// ExitStatus is how a launcher ended.
type ExitStatus struct {
	Code       int    // exit code 0..255 when Signal is empty
	Signal     string // RFC 4254 signal name without "SIG", when killed by a signal
	CoreDumped bool
	// Ended is true when the signal came from End: the server ended the
	// session, so the signal is not the command's own outcome.
	Ended bool
}

// Process is a running session: the launcher and whatever Darling started
// for it inside the container.
type Process struct {
	// Stdin is the command's stdin; closing it is the command's EOF (on
	// a terminal, closing does nothing: the terminal stays). Stdout and
	// Stderr read its output; Stdout starts where the command started,
	// after any startup noise. On a terminal, Stderr is empty.
	Stdin          *Input
	Stdout, Stderr *Output

	outFiles []*os.File // our ends of the pipes or the terminal
	pty      *os.File   // the terminal's master, or nil

	cmd     *exec.Cmd
	procs   *sessionProcs // the session's processes, by marker and descent
	l       *Launcher
	done    chan struct{}
	status  ExitStatus
	waitErr error
	ended   atomic.Bool
	endOnce sync.Once
	usage   Usage // from the session's cgroup, once ended
	// gateStop, if set, stops the goroutine that opens the script's gate
	// (see openGate).
	gateStop chan struct{}
	// request names the request file a launcher started ahead was given
	// (see pool), removed when the session ends; "" for none.
	request string
}

// newSessionID returns a random marker value for a session.
func newSessionID() (string, error) {
	var b [12]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("session id: %w", err)
	}
	return hex.EncodeToString(b[:]), nil
}

// Start runs req through the launcher, after warming the prefix if its
// container is not running, so that a session is never handed a cold
// start. stdin, stdout and stderr are separate pipes, or one terminal when
// req.PTY is set. If the container stops while the session starts (see
// launch), the session is started once more, after a warm-up.
func (l *Launcher) Start(ctx context.Context, req Request) (*Process, error) {
	s, err := l.prepare(req)
	if err != nil {
		return nil, err
	}
	if l.pool != nil && pooled(req) {
		if p, ok := l.pool.serve(ctx, s); ok {
			return p, nil
		}
	}
	p, err := l.launch(ctx, s)
	if !errors.Is(err, errContainerStopped) {
		return p, err
	}
	l.Log.Warn("the prefix's container stopped while a session started; its launcher was ended, starting the session again",
		"prefix", l.Prefix, "err", err)
	// A new marker: nothing the first launcher left can pass for the
	// second one's.
	if s, err = l.prepare(req); err != nil {
		return nil, err
	}
	p, err = l.launch(ctx, s)
	if errors.Is(err, errContainerStopped) {
		err = fmt.Errorf("%w (twice; the session was not started)", err)
	}
	return p, err
}

// session is a launcher's run prepared for a request: its marker and its
// argv and environment.
type session struct {
	req        Request
	id, marker string
	gate       string // the script's gate step; "" without session cgroups
	// member: a launcher started ahead (see pool), which the tracker
	// never follows: it is handed a session only once its cgroup holds
	// it whole.
	member    bool
	args, env []string
}

// prepare gives req a session marker of its own and builds the launcher's
// argv and environment, checked to fit Darling's messages.
func (l *Launcher) prepare(req Request) (session, error) {
	id, err := newSessionID()
	if err != nil {
		return session{}, err
	}
	// A terminal is for a person: no marker is printed on it. Without
	// one, commands and shells alike start after the marker.
	var marker string
	if req.PTY == nil {
		marker = "\x1edarling-sshd:" + id + "\x1e"
	}
	s := session{req: req, id: id, marker: marker, env: l.Env(req, id)}
	if l.Cgroups != nil {
		s.gate = gateStep(req.PTY != nil)
	}
	s.args = l.args(req, marker, s.gate)
	return s, Check(s.args, s.env)
}

// errSecondContainer is Wait's error for a session ended before its
// command ran because its launcher started a container of its own (see
// openGate).
var errSecondContainer = errors.New("the launcher found no .init.pid in the prefix (a session had just removed it) and started a second container, which would have held the session's output; the session was ended before its command ran, try again")

// errContainerStopped is launch's error when the container it found
// stopped before the launcher could use it.
var errContainerStopped = errors.New("the prefix's container stopped while the session started")

// launch warms the prefix unless its container runs, starts the launcher,
// and checks again that the container it found is the one running. If
// that container died in between, Darling's launcher, which looks for the
// container itself after it started, cold-starts a new one, handing it the
// session's stdout and stderr to keep for as long as it runs (Darling
// #1510): the session's output would never end, and the container's own
// output could reach it. Such a launcher is ended at once with all it
// started, and launch reports errContainerStopped. The warm-up lock is
// held from the check to the re-check, so that no warm-up of ours replaces
// the container in between. The re-check comes once the launcher has
// been exec'd; the launcher reads .init.pid a little later, so a container
// that dies within that short time still escapes it.
func (l *Launcher) launch(ctx context.Context, s session) (*Process, error) {
	l.warmMu.Lock()
	c, err := l.ensureWarmLocked(ctx)
	var p *Process
	if err == nil {
		p, err = l.startLauncher(s)
	}
	if err == nil && l.afterStart != nil {
		l.afterStart()
	}
	kept := err == nil && l.stillRunning(c)
	l.warmMu.Unlock()
	if err != nil {
		return nil, err
	}
	if !kept {
		p.discard(ctx)
		return nil, fmt.Errorf("%w: darlingserver %d of %s is gone", errContainerStopped, c.pid, l.Prefix)
	}
	if s.gate != "" {
		p.openGate(s.id) // the script waits at its gate until then
	}
	return p, nil
}

// stillRunning reports whether c, the container found before a launcher
// started, is still the prefix's running container: the same process
// (pid and start time), not one started since. The zero container (none
// could be verified: every session then warms the prefix first) is not
// checked.
func (l *Launcher) stillRunning(c container) bool {
	if c.pid == 0 {
		return true
	}
	now := l.verified()
	return now.pid == c.pid && now.start == c.start
}

// startLauncher starts the launcher for a session prepared by Start.
func (l *Launcher) startLauncher(s session) (*Process, error) {
	cmd := exec.Command(l.Path, s.args...)
	cmd.Dir = "/"
	var sio *stdio
	var err error
	if s.req.PTY != nil {
		sio, err = newPTY(cmd, s.req.PTY)
	} else {
		sio, err = newPipes(cmd)
	}
	if err != nil {
		return nil, err
	}
	// newPTY adds TERM, so the environment is set after it.
	if err := Check(nil, sio.env); err != nil {
		sio.closeAll()
		return nil, err
	}
	cmd.Env = append(s.env[:len(s.env):len(s.env)], sio.env...)
	if err := cmd.Start(); err != nil {
		sio.closeAll()
		return nil, fmt.Errorf("start launcher %s: %w", l.Path, err)
	}
	sio.closeChild()

	p := &Process{
		Stdin:  &Input{w: sio.stdin, bufs: &l.bufs},
		Stdout: &Output{f: sio.stdout, bufs: &l.bufs},
		Stderr: &Output{f: sio.stderr, bufs: &l.bufs},
		cmd:    cmd,
		pty:    sio.pty,
		procs:  newSessionProcs(s.id, startTime(cmd.Process.Pid), l.containerPid()),
		l:      l,
		done:   make(chan struct{}),
	}
	p.outFiles = sio.parent
	if s.marker != "" {
		p.Stdout.head = &markerReader{r: sio.stdout, marker: []byte(s.marker), log: l.Log, bufs: &l.bufs}
	}
	if !s.member {
		l.tracker.add(p.procs)
	}
	go p.wait()
	return p, nil
}

// discard ends a session that must not go on, before anyone used it: its
// launcher and all the session's processes are killed at once (no grace:
// nobody saw the session), our ends of its stdio are closed, and it
// returns once the launcher is reaped (bounded by discardWait) or ctx is
// done.
func (p *Process) discard(ctx context.Context) {
	p.endOnce.Do(func() {
		p.ended.Store(true)
		p.endSession(ctx, 0)
	})
	p.CloseOutput()
	t := time.NewTimer(discardWait)
	defer t.Stop()
	select {
	case <-p.done:
	case <-ctx.Done():
	case <-t.C:
	}
}

// discardWait bounds how long discard waits for the launcher to be
// reaped once the session's processes are gone: a launcher the server may
// not kill (setuid root, a server not run as root) is left to its wait.
const discardWait = 2 * time.Second

func (p *Process) wait() {
	awaitExit(p.cmd.Process.Pid)
	err := p.cmd.Wait()
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		ws, _ := ee.Sys().(syscall.WaitStatus)
		switch {
		case ws.Signaled():
			p.status.Signal = signalName(ws.Signal())
			p.status.CoreDumped = ws.CoreDump()
		default:
			p.status.Code = ws.ExitStatus()
		}
	default:
		p.waitErr = err
	}
	p.status.Ended = p.ended.Load()
	if p.procs.inOtherContainer() && p.waitErr == nil {
		p.waitErr = errSecondContainer
	}
	close(p.done)
}

// awaitExit returns once the child pid has exited, parked in Go's poller
// on a pidfd: os.Process.Wait blocks a thread in waitid(2) for as long as
// the session runs, and a thread per session costs more memory than the
// rest of an idle session. Without pidfds it returns at once and Wait
// blocks as before.
func awaitExit(pid int) {
	fd, err := unix.PidfdOpen(pid, unix.PIDFD_NONBLOCK)
	if err != nil {
		return
	}
	f := os.NewFile(uintptr(fd), "pidfd")
	defer f.Close()
	_ = pollExit(f)
}

// exitsWithin reports whether the process that started at start is gone,
// or exits within d or before ctx ends. Without pidfds it answers from
// /proc at once.
func exitsWithin(ctx context.Context, pid int, start uint64, d time.Duration) bool {
	fd, err := unix.PidfdOpen(pid, unix.PIDFD_NONBLOCK)
	if err != nil {
		return !startedAt(pid, start) // ESRCH: gone; ENOSYS: no pidfds
	}
	f := os.NewFile(uintptr(fd), "pidfd")
	defer f.Close()
	// Read after the pidfd was opened: a zombie, or the pid's next owner,
	// does not match.
	if !startedAt(pid, start) {
		return true
	}
	if f.SetReadDeadline(time.Now().Add(d)) != nil {
		return false
	}
	stop := context.AfterFunc(ctx, func() { _ = f.SetReadDeadline(time.Now()) })
	defer stop()
	return pollExit(f) == nil
}

// pollExit returns nil once the process of the pidfd f has exited, or the
// error that ended the wait (f's read deadline).
func pollExit(f *os.File) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	// Polled before each wait: the poller reports only later changes.
	var perr error
	err = rc.Read(func(fd uintptr) bool {
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		for {
			n, err := unix.Poll(pfd, 0)
			if err != unix.EINTR {
				perr = err
				return err != nil || n > 0
			}
		}
	})
	if err != nil {
		return err
	}
	return perr
}

// Done is closed when the launcher has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// Wait waits for the launcher to exit and returns how it ended.
func (p *Process) Wait() (ExitStatus, error) {
	<-p.done
	return p.status, p.waitErr
}

// CloseOutput stops reading the command's output; pending reads return.
// It is for a session being ended, whose output nobody wants any more.
func (p *Process) CloseOutput() {
	for _, f := range p.outFiles {
		f.Close()
	}
}

// Pid is the launcher's process id.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// End ends the session: it closes the command's stdin (Nix's
// nix-store --serve aborts on it), sends SIGHUP to every process of the
// session wherever Darling started it, and SIGKILL to what is left after
// grace. It returns when none is left, or when ctx is done. It is safe to
// call more than once and from several goroutines: the first call does the
// work and the others wait until it is done.
func (p *Process) End(ctx context.Context) {
	p.endOnce.Do(func() {
		p.ended.Store(true)
		p.endSession(ctx, p.l.KillGrace)
	})
}

// Sweep ends any process of the session still running after the session
// finished normally (a daemon the command left behind), without marking the
// session as ended by the server.
func (p *Process) Sweep(ctx context.Context) {
	p.endOnce.Do(func() { p.endSession(ctx, p.l.KillGrace) })
}

// endSession closes stdin, ends the session's processes, and reads its
// cgroup's usage before it removes the cgroup.
func (p *Process) endSession(ctx context.Context, grace time.Duration) {
	if p.gateStop != nil {
		close(p.gateStop)
		<-p.Stdin.gate
	}
	p.Stdin.Close()
	p.l.killSession(ctx, p.procs, grace)
	if p.request != "" {
		p.l.removeRequests(p.request)
	}
	if cg := p.procs.cg; cg != nil {
		p.usage = cg.usage()
		if err := cg.remove(); err != nil {
			p.l.Log.Warn("remove the session's cgroup", "dir", cg.dir, "err", err)
		}
	}
}

// Usage is what the session's processes used, as far as its cgroup says;
// known once End or Sweep has returned.
func (p *Process) Usage() Usage { return p.usage }

// signalName returns the RFC 4254 (section 6.10) name of sig, or
// "SIG@openssh.com" as OpenSSH's sshd sends for signals the RFC does not name.
func signalName(sig syscall.Signal) string {
	switch sig {
	case unix.SIGABRT, unix.SIGALRM, unix.SIGFPE, unix.SIGHUP, unix.SIGILL, unix.SIGINT,
		unix.SIGKILL, unix.SIGPIPE, unix.SIGQUIT, unix.SIGSEGV, unix.SIGTERM, unix.SIGUSR1,
		unix.SIGUSR2:
		return strings.TrimPrefix(unix.SignalName(sig), "SIG")
	}
	return "SIG@openssh.com"
}
