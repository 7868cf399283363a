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
// call, for the reason darlingexec's vectorWriter gives: Go's runtime
// hands a thread's P to another thread while it is in an ordinary system
// call that spans a tick of its monitor and goroutines wait, and with the
// server's one P the Go code of an upload hopped between threads. The
// socket is non-blocking (Go's poller waits for it), so the call never
// waits. Deadlines and Close work as for the connection's own Read, whose
// errors it wraps the same way. One goroutine reads (x/crypto's read
// loop); the state of a read lives in the struct and call is bound once,
// so a read allocates nothing.
type rawReader struct {
	c     net.Conn
	rc    syscall.RawConn
	call  func(fd uintptr) bool // r.read
	p     []byte
	n     int
	errno syscall.Errno
}

// newRawReader returns a rawReader for c, or c itself when it has no
// file descriptor (a test's in-memory pipe).
func newRawReader(c net.Conn) io.Reader {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return c
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return c
	}
	r := &rawReader{c: c, rc: rc}
	r.call = r.read
	return r
}

func (r *rawReader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	r.p, r.n, r.errno = p, 0, 0
	err := r.rc.Read(r.call)
	r.p = nil
	switch {
	case err != nil:
	case r.errno != 0:
		err = os.NewSyscallError("read", r.errno)
	case r.n == 0:
		return 0, io.EOF
	default:
		return r.n, nil
	}
	return 0, &net.OpError{Op: "read", Net: r.c.LocalAddr().Network(), Source: r.c.LocalAddr(), Addr: r.c.RemoteAddr(), Err: err}
}

// read is the system call, for RawConn.Read: false to wait until the
// socket is readable.
func (r *rawReader) read(fd uintptr) bool {
	for {
		n, _, e := unix.RawSyscall(unix.SYS_READ, fd, uintptr(unsafe.Pointer(&r.p[0])), uintptr(len(r.p)))
		switch e {
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false
		}
		r.n, r.errno = int(n), e
		return true
	}
}
