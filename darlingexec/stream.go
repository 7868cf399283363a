package darlingexec

import (
	"errors"
	"io"
	"os"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// copyBuffer is the size of the buffers that carry a burst of data. Large
// reads and writes cross a bulk transfer (a store path) in few system
// calls; the buffers are lent from a pool only while data flows, so an
// idle session holds none.
const copyBuffer = 256 << 10

// quietBuffer is the size of the buffers a quiet stream reads with: the
// first read after a wait, and what Input.ReadFrom waits with. A read that
// fills one starts a burst. Sessions that start together each read their
// first few bytes with one of these rather than pinning a copyBuffer.
const quietBuffer = 4 << 10

// buffers lends copy buffers to the streams of all sessions.
type buffers struct{ big, quiet sync.Pool }

// get lends a copyBuffer during a burst, else a quietBuffer.
func (b *buffers) get(burst bool) *[]byte {
	pool, size := &b.quiet, quietBuffer
	if burst {
		pool, size = &b.big, copyBuffer
	}
	if p, ok := pool.Get().(*[]byte); ok {
		return p
	}
	buf := make([]byte, size)
	return &buf
}

// put takes back a buffer from get.
func (b *buffers) put(p *[]byte) {
	if len(*p) == copyBuffer {
		b.big.Put(p)
	} else {
		b.quiet.Put(p)
	}
}

// stillBursting reports whether a stream is in a burst after a read of n
// bytes into buf, made during a burst or not.
func stillBursting(burst bool, n int, buf []byte) bool {
	if burst {
		return n >= quietBuffer
	}
	return n == len(buf)
}

// Output is one of the command's output streams: a pipe, or the terminal.
// It is read through Go's poller and WriteTo takes a buffer only once
// output is there, so a quiet command costs no buffer.
type Output struct {
	f    *os.File      // nil: an empty stream (stderr on a terminal)
	bufs *buffers      // lends WriteTo its buffers
	head *markerReader // drops startup noise until the marker has passed; then nil
}

// Read reads output; io.Copy uses WriteTo instead.
func (o *Output) Read(p []byte) (int, error) {
	if o.f == nil {
		return 0, io.EOF
	}
	if o.head != nil {
		n, err := o.head.Read(p)
		if o.head.found && len(o.head.pending) == 0 {
			o.head = nil
		}
		return n, err
	}
	return o.f.Read(p)
}

// WriteTo copies the output to w until it ends. A read error ends it like
// EOF does: a terminal's master reads EIO once the command has gone, and
// CloseOutput makes a pending read fail.
func (o *Output) WriteTo(w io.Writer) (int64, error) {
	if o.f == nil {
		return 0, nil
	}
	var total int64
	if o.head != nil {
		if !o.head.found {
			if err := o.head.search(); err != nil {
				return 0, ignoreEOF(err)
			}
		}
		p := o.head.pending
		o.head = nil
		if len(p) > 0 {
			n, err := w.Write(p)
			total += int64(n)
			if err != nil {
				return total, err
			}
		}
	}
	rc, err := o.f.SyscallConn()
	if err != nil {
		return total, err
	}
	burst := false
	for {
		buf, n, err := o.readPooled(rc, burst)
		if burst && err == nil && n < coalesceTarget {
			n, err = o.coalesce(rc, *buf, n)
		}
		if n > 0 {
			nw, werr := w.Write((*buf)[:n])
			total += int64(nw)
			if werr != nil {
				o.bufs.put(buf)
				return total, werr
			}
		}
		if buf != nil {
			burst = stillBursting(burst, n, *buf)
			o.bufs.put(buf)
		}
		if err != nil {
			return total, ignoreEOF(err)
		}
	}
}

// readPooled waits until output is there, holding no buffer, then reads
// it into one from the pool, a big one if a burst is on. The read is
// tried before waiting: Go's poller is edge-triggered and reports only
// data that arrives after it was asked.
func (o *Output) readPooled(rc syscall.RawConn, burst bool) (buf *[]byte, n int, err error) {
	var rerr error
	err = rc.Read(func(fd uintptr) bool {
		if buf == nil {
			buf = o.bufs.get(burst)
		}
		for {
			n, rerr = unix.Read(int(fd), *buf)
			if rerr != unix.EINTR {
				break
			}
		}
		if rerr == unix.EAGAIN {
			o.bufs.put(buf)
			buf = nil
			return false
		}
		return true
	})
	switch {
	case err != nil:
	case rerr != nil:
		n, err = 0, &os.PathError{Op: "read", Path: o.f.Name(), Err: rerr}
	case n <= 0:
		n, err = 0, io.EOF
	}
	return buf, n, err
}

// coalesceTarget is the output a burst gathers before it is written: an
// SSH packet's worth (OpenSSH's client takes 32 KiB packets). Each write
// becomes at least one packet, which costs both ends a MAC, a header and
// the client a decryption call; a command that writes in small pieces
// (head writes 8 KiB, and a busy machine splits reads further) would
// otherwise cost a packet per piece.
const coalesceTarget = 32 << 10

// coalesceWait bounds how long a burst waits for more output to fill a
// packet. It is paid once at a burst's end, never by a quiet stream: a
// request-and-answer protocol's replies go out at once.
const coalesceWait = 500 * time.Microsecond

// coalesce adds to buf[:n], during a burst, what the command writes
// within coalesceWait, until coalesceTarget bytes are there. It returns
// the new length; an error (EOF) comes with the bytes read before it,
// which are written first.
func (o *Output) coalesce(rc syscall.RawConn, buf []byte, n int) (int, error) {
	deadline := time.Now().Add(coalesceWait)
	for n < coalesceTarget && n < len(buf) {
		wait := time.Until(deadline)
		if wait <= 0 {
			return n, nil
		}
		var m int
		var rerr error
		more := false
		err := rc.Control(func(fd uintptr) {
			pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
			ts := unix.NsecToTimespec(wait.Nanoseconds())
			if k, _ := unix.Ppoll(pfd, &ts, nil); k <= 0 {
				return
			}
			for {
				m, rerr = unix.Read(int(fd), buf[n:])
				if rerr != unix.EINTR {
					break
				}
			}
			more = true
		})
		switch {
		case err != nil:
			return n, nil
		case !more || rerr == unix.EAGAIN:
			return n, nil
		case rerr != nil || m <= 0:
			// The end, or an error: what was read goes out; the next
			// read reports it.
			return n, nil
		}
		n += m
	}
	return n, nil
}

// Input is the command's stdin: a pipe, or the terminal.
type Input struct {
	w    io.WriteCloser
	bufs *buffers
	// gate, if set, is closed once the script's gate line has gone
	// through w: the client's bytes wait for it.
	gate <-chan struct{}
}

// Write writes to the command's stdin.
func (in *Input) Write(p []byte) (int, error) {
	in.waitGate()
	return in.w.Write(p)
}

func (in *Input) waitGate() {
	if in.gate != nil {
		<-in.gate
	}
}

// Close is the command's EOF; on a terminal it does nothing, since the
// terminal is also the command's output.
func (in *Input) Close() error { return in.w.Close() }

// PeekSource lends the data it holds without copying it, as x/crypto's
// channel does with third_party's patch 5: Input.ReadFrom hands it to the
// pipe with writev(2), so that no byte is copied in user space on its way
// from the client's packet to the command's stdin.
type PeekSource interface {
	// PeekData appends to bufs up to max bytes of the data held, waiting
	// for some; io.EOF once there is none and no more will come.
	PeekData(bufs [][]byte, max int) ([][]byte, error)
	// DiscardData consumes n bytes of what PeekData returned.
	DiscardData(n int) error
}

// ReadFrom copies r to the command's stdin until r ends. A PeekSource's
// data goes to a pipe as it lies, a burst at a time (writevFrom).
// Otherwise, while r is quiet it waits with a small buffer; once a read
// fills that, a burst is on and a pooled buffer carries it, until a read
// shows the burst is over.
func (in *Input) ReadFrom(r io.Reader) (int64, error) {
	in.waitGate()
	if ps, ok := r.(PeekSource); ok {
		if rc := nonblocking(in.w); rc != nil {
			return writevFrom(rc, ps)
		}
	}
	quiet := make([]byte, quietBuffer)
	buf := quiet
	var big *[]byte
	defer func() {
		if big != nil {
			in.bufs.put(big)
		}
	}()
	var total int64
	for {
		n, err := r.Read(buf)
		if n > 0 {
			nw, werr := in.w.Write(buf[:n])
			total += int64(nw)
			if werr != nil {
				return total, werr
			}
		}
		switch burst := stillBursting(big != nil, n, buf); {
		case burst && big == nil:
			big = in.bufs.get(true)
			buf = *big
		case !burst && big != nil:
			in.bufs.put(big)
			big, buf = nil, quiet
		}
		if err != nil {
			return total, ignoreEOF(err)
		}
	}
}

// nonblocking returns the RawConn of w if w is a file in non-blocking
// mode (a pipe from os.Pipe), which writev may write with a raw system
// call; else nil.
func nonblocking(w io.Writer) syscall.RawConn {
	f, ok := w.(*os.File)
	if !ok {
		return nil
	}
	rc, err := f.SyscallConn()
	if err != nil {
		return nil
	}
	nb := false
	err = rc.Control(func(fd uintptr) {
		fl, err := unix.FcntlInt(fd, unix.F_GETFL, 0)
		nb = err == nil && fl&unix.O_NONBLOCK != 0
	})
	if err != nil || !nb {
		return nil
	}
	return rc
}

// writevFrom writes what ps holds to the non-blocking pipe behind rc, up
// to a copyBuffer's worth in each writev(2), until ps ends. It holds no
// data buffer of its own: an idle session costs nothing here.
func writevFrom(rc syscall.RawConn, ps PeekSource) (int64, error) {
	w := &vectorWriter{rc: rc}
	w.call = w.writev
	var total int64
	var bufs [][]byte
	for {
		var err error
		bufs, err = ps.PeekData(bufs[:0], copyBuffer)
		if len(bufs) > 0 {
			n, werr := w.write(bufs)
			total += int64(n)
			derr := ps.DiscardData(n)
			clear(bufs) // no reference to a packet the channel recycled
			if werr != nil {
				return total, werr
			}
			if derr != nil {
				return total, derr
			}
		}
		if err != nil {
			return total, ignoreEOF(err)
		}
	}
}

// vectorWriter writes slices to a non-blocking file with writev(2) made
// as a raw system call. Its state lives in the struct, and call is bound
// once, so a write allocates nothing.
//
// Why raw: Go's runtime takes a thread's P away while it is in an
// ordinary system call that spans a tick of its monitor (20 us and up) if
// goroutines wait for it, and hands the P to another thread, waking it;
// the first thread then waits for a P again. A 256 KiB write into a pipe
// takes longer than that, and the goroutines of the connection are
// runnable meanwhile, so with the server's one P (--procs 1) the Go code
// hopped between threads. The file is non-blocking (nonblocking checks),
// so the call never waits and keeps its P. Measured with the socket reads
// done the same way (sshserver/rawread.go), six alternating pairs each of
// 3 x 1 GiB uploads: server CPU 1.268 -> 1.182 s per GiB quiet, 1.300 ->
// 1.255 s with a busy process on each core.
type vectorWriter struct {
	rc    syscall.RawConn
	call  func(fd uintptr) bool // w.writev
	iovs  [maxIovecs]unix.Iovec
	k     int // iovs in use
	n     int
	errno syscall.Errno
}

// maxIovecs bounds the slices one writev takes: x/crypto's PeekData lends
// at most 64.
const maxIovecs = 64

// write writes bufs (the first maxIovecs of them) with one writev(2),
// waiting in Go's poller while the pipe is full; it may write less than
// all.
func (w *vectorWriter) write(bufs [][]byte) (int, error) {
	w.k = 0
	for _, b := range bufs {
		if len(b) == 0 {
			continue
		}
		if w.k == len(w.iovs) {
			break
		}
		w.iovs[w.k].Base = &b[0]
		w.iovs[w.k].SetLen(len(b))
		w.k++
	}
	if w.k == 0 {
		return 0, nil
	}
	w.n, w.errno = 0, 0
	err := w.rc.Write(w.call)
	clear(w.iovs[:w.k])
	switch {
	case err != nil:
		return 0, err
	case w.errno != 0:
		return 0, &os.PathError{Op: "writev", Path: "stdin", Err: w.errno}
	}
	return w.n, nil
}

// writev is the system call, for RawConn.Write: false to wait until the
// file is writable.
func (w *vectorWriter) writev(fd uintptr) bool {
	for {
		r, _, e := unix.RawSyscall(unix.SYS_WRITEV, fd, uintptr(unsafe.Pointer(&w.iovs[0])), uintptr(w.k))
		switch e {
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false
		}
		w.n, w.errno = int(r), e
		return true
	}
}

func ignoreEOF(err error) error {
	if errors.Is(err, io.EOF) {
		return nil
	}
	return err
}
