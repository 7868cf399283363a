package main

import (
	"encoding/binary"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/creack/pty"
	"golang.org/x/sys/unix"
)

// setupPtys is Darling's terminal mode: the command gets a pty of the
// launcher's own, set up once from the outer terminal's termios and window
// size; the outer terminal goes raw until exit. It returns the master and
// sets all three fds to the slave.
func setupPtys(fds *[3]int) int {
	termios, err := unix.IoctlGetTermios(0, unix.TCGETS)
	tty := err == nil
	master, slave, err := pty.Open()
	if err != nil {
		die("openpty: %s", strerror(err))
	}
	if tty {
		unix.IoctlSetTermios(int(master.Fd()), unix.TCSETS, termios)
	}
	m, _ := unix.Dup(int(master.Fd()))
	s, _ := unix.Dup(int(slave.Fd()))
	master.Close()
	slave.Close()
	fds[0], fds[1], fds[2] = s, s, s
	if tty {
		orig := *termios
		win, _ := unix.IoctlGetWinsize(0, unix.TIOCGWINSZ)
		raw := *termios
		raw.Lflag &^= unix.ICANON | unix.ISIG | unix.IEXTEN | unix.ECHO
		raw.Iflag &^= unix.BRKINT | unix.ICRNL | unix.IGNBRK | unix.IGNCR | unix.INLCR |
			unix.INPCK | unix.ISTRIP | unix.IXON | unix.PARMRK
		raw.Oflag &^= unix.OPOST
		raw.Cc[unix.VMIN], raw.Cc[unix.VTIME] = 1, 0
		if err := unix.IoctlSetTermios(0, unix.TCSETS, &raw); err != nil {
			die("tcsetattr: %s", strerror(err))
		}
		if win != nil {
			unix.IoctlSetWinsize(m, unix.TIOCSWINSZ, win)
		}
		restoreTerm = func() { unix.IoctlSetTermios(0, unix.TCSETS, &orig) }
	}
	return m
}

// shellLoop is upstream's: from now on signals 1-31 are caught and
// forwarded (SIGWINCH also resizes the pty); in terminal mode bytes are
// relayed 4 KiB at a time; the first readable event on the socket ends
// the launcher with the status, or with 1 if there is none.
func shellLoop(sock, master int) {
	relaySignals(sock, master)

	pfds := []unix.PollFd{
		{Fd: int32(sock), Events: unix.POLLIN},
		{Fd: 0, Events: unix.POLLIN},
		{Fd: int32(master), Events: unix.POLLIN},
	}
	n := 1
	if master != -1 {
		n = 3
		unix.SetNonblock(master, true)
	}
	unix.SetNonblock(sock, true)
	buf := make([]byte, 4096)
	for {
		for i := range pfds {
			pfds[i].Revents = 0
		}
		if _, err := unix.Poll(pfds[:n], -1); err != nil && err != unix.EINTR {
			fmt.Fprintf(os.Stderr, "poll: %s\n", strerror(err))
			return
		}
		if pfds[2].Revents&unix.POLLIN != 0 {
			relayOutput(master, buf)
		}
		if pfds[1].Revents&unix.POLLIN != 0 {
			relayInput(master, buf)
		}
		if pfds[0].Revents&(unix.POLLHUP|unix.POLLIN) != 0 {
			exitWithStatus(sock)
		}
	}
}

// relaySignals catches signals 1-31 (not SIGKILL and SIGSTOP, which
// cannot be caught, nor SIGURG, which the Go runtime uses) and sends each
// to shellspawn. Outside terminal mode SIGINT goes
// as SIGTERM; in terminal mode SIGWINCH first copies the outer window size
// to the pty.
func relaySignals(sock, master int) {
	sigs := make(chan os.Signal, 32)
	for i := 1; i < 32; i++ {
		s := syscall.Signal(i)
		if s == unix.SIGKILL || s == unix.SIGSTOP || s == unix.SIGURG {
			continue
		}
		signal.Notify(sigs, s)
	}
	go func() {
		for s := range sigs {
			signo := int(s.(syscall.Signal))
			if signo == int(unix.SIGWINCH) && master != -1 {
				if win, err := unix.IoctlGetWinsize(0, unix.TIOCGWINSZ); err == nil {
					unix.IoctlSetWinsize(master, unix.TIOCSWINSZ, win)
				}
			}
			if master == -1 && signo == int(unix.SIGINT) {
				signo = int(unix.SIGTERM)
			}
			var b [4]byte
			binary.NativeEndian.PutUint32(b[:], uint32(signo))
			pushData(sock, cmdSignal, b[:])
		}
	}()
}

// relayOutput copies what the pty has to stdout, a buffer at a time, until
// a read comes back short.
func relayOutput(master int, buf []byte) {
	for {
		rd, _ := unix.Read(master, buf)
		if rd > 0 {
			unix.Write(1, buf[:rd])
		}
		if rd != len(buf) {
			break
		}
	}
}

// relayInput copies what stdin has to the pty, at most a buffer at a time,
// until a read comes back short. End of input or a failed read ends the
// launcher with 1, as upstream's does.
func relayInput(master int, buf []byte) {
	for {
		avail, err := unix.IoctlGetInt(0, unix.TIOCINQ)
		if err != nil {
			die("ioctl: %s", strerror(err))
		}
		if avail > len(buf) {
			avail = len(buf)
		}
		rd, err := unix.Read(0, buf[:avail])
		if rd > 0 {
			unix.Write(master, buf[:rd])
		} else {
			if err == nil {
				err = unix.Errno(0)
			}
			die("read: %s", strerror(err))
		}
		if rd != len(buf) {
			break
		}
	}
}

// exitWithStatus ends the launcher with the status shellspawn sent, or
// with 1 when the socket closed without one.
func exitWithStatus(sock int) {
	var st [4]byte
	if rd, _ := unix.Read(sock, st[:]); rd == 4 {
		exit(int(int32(binary.NativeEndian.Uint32(st[:]))))
	}
	exit(1)
}
