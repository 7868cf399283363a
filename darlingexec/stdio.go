package darlingexec

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"syscall"

	"github.com/creack/pty"
	"golang.org/x/sys/unix"
)

// PTY asks for the command to run on a terminal.
type PTY struct {
	Term       string // TERM
	Cols, Rows uint16
	// Modes, if set, adjusts the terminal's settings before the command
	// starts (the client's terminal modes).
	Modes func(*unix.Termios)
	// Latest, if set, gives a size sent since Cols and Rows: the terminal
	// starts with it, as Darling's launcher reads the size only once at
	// start and would lose a change sent before it listens for them.
	Latest func() (cols, rows uint16, ok bool)
}

// stdio is a command's stdin, stdout and stderr being set up: the
// parent's ends, and the child's, closed once the child has them.
type stdio struct {
	stdin          io.WriteCloser
	stdout, stderr *os.File   // stderr is nil on a terminal
	parent         []*os.File // ours, closed by CloseOutput
	child          []*os.File // the launcher's, closed after it started
	pty            *os.File
	env            []string
}

func (s *stdio) closeChild() {
	for _, f := range s.child {
		f.Close()
	}
}

func (s *stdio) closeAll() {
	s.closeChild()
	for _, f := range s.parent {
		f.Close()
	}
}

// newPipes gives the command three pipes, each binary-safe. Its output
// pipes are *os.File, so that exec.Cmd starts no copying goroutine and a
// process that keeps them open cannot hang Wait (go#23019).
func newPipes(cmd *exec.Cmd) (*stdio, error) {
	s := &stdio{}
	var f [6]*os.File // stdin r,w; stdout r,w; stderr r,w
	for i := 0; i < 6; i += 2 {
		r, w, err := os.Pipe()
		if err != nil {
			s.closeAll()
			return nil, fmt.Errorf("pipe: %w", err)
		}
		f[i], f[i+1] = r, w
		growPipe(w)
		if i == 0 {
			s.child, s.parent = append(s.child, r), append(s.parent, w)
		} else {
			s.child, s.parent = append(s.child, w), append(s.parent, r)
		}
	}
	s.stdin, s.stdout, s.stderr = f[1], f[2], f[4]
	cmd.Stdin, cmd.Stdout, cmd.Stderr = f[0], f[3], f[5]
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	return s, nil
}

// pipeSize is the capacity asked for each pipe: bulk transfers (store
// paths) then cross it in fewer, larger steps than the default 64 KiB.
const pipeSize = 1 << 20

// growPipe enlarges a pipe's buffer, as far as the system allows; the
// default size is kept when it refuses.
func growPipe(f *os.File) {
	if rc, err := f.SyscallConn(); err == nil {
		rc.Control(func(fd uintptr) {
			_, _ = unix.FcntlInt(fd, unix.F_SETPIPE_SZ, pipeSize)
		})
	}
}

// newPTY gives the command a terminal: the launcher's stdin, stdout and
// stderr are its slave, and it is the launcher's controlling terminal.
// Darling, seeing a terminal, gives the command a terminal of its own
// with these settings and size and forwards size changes.
func newPTY(cmd *exec.Cmd, p *PTY) (*stdio, error) {
	master, slave, err := openPTY()
	if err != nil {
		return nil, err
	}
	s := &stdio{parent: []*os.File{master}, child: []*os.File{slave}, pty: master}
	if p.Modes != nil {
		t, err := unix.IoctlGetTermios(int(slave.Fd()), unix.TCGETS)
		if err == nil {
			p.Modes(t)
			err = unix.IoctlSetTermios(int(slave.Fd()), unix.TCSETS, t)
		}
		if err != nil {
			s.closeAll()
			return nil, fmt.Errorf("terminal modes: %w", err)
		}
	}
	cols, rows := p.Cols, p.Rows
	if p.Latest != nil {
		if c, r, ok := p.Latest(); ok {
			cols, rows = c, r
		}
	}
	if err := setSize(master, cols, rows); err != nil {
		s.closeAll()
		return nil, fmt.Errorf("terminal size: %w", err)
	}
	s.stdin = ptyInput{master}
	s.stdout = master
	cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	if p.Term != "" {
		s.env = append(s.env, "TERM="+p.Term)
	}
	// No SSH_TTY here: the slave's host path names a device the command
	// does not have (Darling relays to a pty of its own); the script sets
	// it from inside (ttyStep).
	return s, nil
}

// ptyInput writes to the terminal; closing it does not close the
// terminal, which is also the command's output.
type ptyInput struct{ f *os.File }

func (p ptyInput) Write(b []byte) (int, error) { return p.f.Write(b) }
func (p ptyInput) Close() error                { return nil }

// openPTY opens a terminal pair with the master non-blocking, so that it
// is read through Go's poller and closing it ends a pending read.
func openPTY() (master, slave *os.File, err error) {
	m, slave, err := pty.Open()
	if err != nil {
		return nil, nil, fmt.Errorf("open pty: %w", err)
	}
	// Duplicated close-on-exec in one step: a fork meanwhile (another
	// session starting) must not inherit the master.
	fd, err := unix.FcntlInt(m.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	m.Close()
	if err == nil {
		err = unix.SetNonblock(fd, true)
	}
	if err != nil {
		slave.Close()
		return nil, nil, fmt.Errorf("open pty: %w", err)
	}
	return os.NewFile(uintptr(fd), "/dev/ptmx"), slave, nil
}

// setSize sets a terminal's size through the master without File.Fd,
// which would put it back in blocking mode.
func setSize(master *os.File, cols, rows uint16) error {
	rc, err := master.SyscallConn()
	if err != nil {
		return err
	}
	var ierr error
	err = rc.Control(func(fd uintptr) {
		ierr = unix.IoctlSetWinsize(int(fd), unix.TIOCSWINSZ, &unix.Winsize{Col: cols, Row: rows})
	})
	if err != nil {
		return err
	}
	return ierr
}

// Resize sets the terminal's size; the kernel tells the launcher with
// SIGWINCH. Without a terminal, or once the output is closed, it does
// nothing.
func (p *Process) Resize(cols, rows uint16) error {
	if p.pty == nil {
		return nil
	}
	return setSize(p.pty, cols, rows)
}
