package sshserver

import (
	"io"
	"net"
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// rawReader reads a connection's socket with read(2) made as a raw system
// call, for the reason darlingexec's writev gives: Go's runtime hands a
// thread's P to another thread while it is in an ordinary system call
// that spans a tick of its monitor and goroutines wait, and with the
// server's one P the Go code of an upload hopped between threads. The
// socket is non-blocking (Go's poller waits for it), so the call never
// waits. Deadlines and Close work as for the connection's own Read.
type rawReader struct{ rc syscall.RawConn }

// newRawReader returns a rawReader for c, or c itself when it has no
// file descriptor (a test's in-memory pipe).
func newRawReader(c net.Conn) io.Reader {
	if sc, ok := c.(syscall.Conn); ok {
		if rc, err := sc.SyscallConn(); err == nil {
			return rawReader{rc}
		}
	}
	return c
}

func (r rawReader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	var n int
	var errno syscall.Errno
	err := r.rc.Read(func(fd uintptr) bool {
		for {
			m, _, e := unix.RawSyscall(unix.SYS_READ, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
			switch e {
			case unix.EINTR:
				continue
			case unix.EAGAIN:
				return false
			}
			n, errno = int(m), e
			return true
		}
	})
	switch {
	case err != nil:
		return 0, err
	case errno != 0:
		return 0, os.NewSyscallError("read", errno)
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}
