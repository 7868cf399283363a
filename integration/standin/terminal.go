package main

import (
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/creack/pty"
	"golang.org/x/sys/unix"
)

// terminal is Darling's terminal mode: when the launcher's stdin is a
// terminal, the command gets a pty of its own with the outer terminal's
// settings and size; the outer terminal goes raw, bytes are relayed both
// ways, and SIGWINCH becomes a size change.
type terminal struct {
	master, slave *os.File
	saved         *unix.Termios
	outDone       chan struct{}
}

func newTerminal() (*terminal, error) {
	master, slave, err := pty.Open()
	if err != nil {
		return nil, err
	}
	outer, err := unix.IoctlGetTermios(0, unix.TCGETS)
	if err != nil {
		return nil, err
	}
	if err := unix.IoctlSetTermios(int(slave.Fd()), unix.TCSETS, outer); err != nil {
		return nil, err
	}
	pty.InheritSize(os.Stdin, master)
	saved := *outer
	raw := *outer
	// cfmakeraw
	raw.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.PARMRK | unix.ISTRIP | unix.INLCR | unix.IGNCR | unix.ICRNL | unix.IXON
	raw.Oflag &^= unix.OPOST
	raw.Lflag &^= unix.ECHO | unix.ECHONL | unix.ICANON | unix.ISIG | unix.IEXTEN
	raw.Cflag &^= unix.CSIZE | unix.PARENB
	raw.Cflag |= unix.CS8
	raw.Cc[unix.VMIN], raw.Cc[unix.VTIME] = 1, 0
	if err := unix.IoctlSetTermios(0, unix.TCSETS, &raw); err != nil {
		return nil, err
	}
	return &terminal{master: master, slave: slave, saved: &saved, outDone: make(chan struct{})}, nil
}

func (t *terminal) slaveFd() int { return int(t.slave.Fd()) }

// start relays once the command has the slave; our copy is closed so that
// the master reads EOF (EIO) when the command's side is gone.
func (t *terminal) start() {
	t.slave.Close()
	winch := make(chan os.Signal, 1)
	signal.Notify(winch, syscall.SIGWINCH)
	go func() {
		for range winch {
			pty.InheritSize(os.Stdin, t.master)
		}
	}()
	go io.Copy(t.master, os.Stdin)
	go func() {
		io.Copy(os.Stdout, t.master)
		close(t.outDone)
	}()
}

// wait waits until the command's output is relayed.
func (t *terminal) wait() { <-t.outDone }

func (t *terminal) restore() {
	unix.IoctlSetTermios(0, unix.TCSETS, t.saved)
}
