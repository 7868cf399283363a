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
// req.PTY is set.
func (l *Launcher) Start(ctx context.Context, req Request) (*Process, error) {
	id, err := newSessionID()
	if err != nil {
		return nil, err
	}
	// A terminal is for a person: no marker is printed on it. Without
	// one, commands and shells alike start after the marker.
	var marker string
	if req.PTY == nil {
		marker = "\x1edarling-sshd:" + id + "\x1e"
	}
	args := l.Args(req, marker)
	env := l.Env(req, id)
	if err := Check(args, env); err != nil {
		return nil, err
	}
	if err := l.EnsureWarm(ctx); err != nil {
		return nil, err
	}

	cmd := exec.Command(l.Path, args...)
	cmd.Dir = "/"
	var sio *stdio
	if req.PTY != nil {
		sio, err = newPTY(cmd, req.PTY)
	} else {
		sio, err = newPipes(cmd)
	}
	if err != nil {
		return nil, err
	}
	// newPTY adds TERM and SSH_TTY, so the environment is set after it.
	if err := Check(nil, sio.env); err != nil {
		sio.closeAll()
		return nil, err
	}
	cmd.Env = append(env, sio.env...)
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
		procs:  newSessionProcs(id, startTime(cmd.Process.Pid), l.containerPid()),
		l:      l,
		done:   make(chan struct{}),
	}
	p.outFiles = sio.parent
	if marker != "" {
		p.Stdout.head = &markerReader{r: sio.stdout, marker: []byte(marker), log: l.Log, bufs: &l.bufs}
	}
	l.tracker.add(p.procs)
	go p.wait()
	return p, nil
}

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
	rc, err := f.SyscallConn()
	if err != nil {
		return
	}
	// Polled before each wait: the poller reports only later changes.
	_ = rc.Read(func(fd uintptr) bool {
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		for {
			n, err := unix.Poll(pfd, 0)
			if err != unix.EINTR {
				return err != nil || n > 0
			}
		}
	})
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
		p.Stdin.Close()
		p.l.killSession(ctx, p.procs, p.l.KillGrace)
	})
}

// Sweep ends any process of the session still running after the session
// finished normally (a daemon the command left behind), without marking the
// session as ended by the server.
func (p *Process) Sweep(ctx context.Context) {
	p.endOnce.Do(func() {
		p.Stdin.Close()
		p.l.killSession(ctx, p.procs, p.l.KillGrace)
	})
}

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
