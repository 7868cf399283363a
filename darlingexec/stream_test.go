package darlingexec

import (
	"bytes"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"testing"
)

// chunkReader returns its data in reads of the given sizes, in turn, as
// an SSH channel returns packets.
type chunkReader struct {
	data  []byte
	sizes []int
	i     int
}

func (c *chunkReader) Read(p []byte) (int, error) {
	if len(c.data) == 0 {
		return 0, io.EOF
	}
	n := min(len(p), c.sizes[c.i%len(c.sizes)], len(c.data))
	c.i++
	copy(p, c.data[:n])
	c.data = c.data[n:]
	return n, nil
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	r := rand.New(rand.NewPCG(1, 2))
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// pipeOutput is an Output reading a fresh pipe, and the pipe's write end.
func pipeOutput(t testing.TB, bufs *buffers) (*Output, *os.File) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close(); w.Close() })
	return &Output{f: r, bufs: bufs}, w
}

// TestInputReadFromBursts: what reaches stdin is what was read, byte for
// byte, through quiet reads, bursts and their ends in any order.
func TestInputReadFromBursts(t *testing.T) {
	data := randomBytes(3<<20 + 12345)
	for _, sizes := range [][]int{{1}, {quietBuffer}, {32 << 10}, {quietBuffer, 7, 32 << 10, 1, copyBuffer * 2}, {100, quietBuffer - 1, quietBuffer + 1}} {
		var out bytes.Buffer
		in := &Input{w: nopCloser{&out}, bufs: &buffers{}}
		n, err := in.ReadFrom(&chunkReader{data: data, sizes: sizes})
		if err != nil || n != int64(len(data)) || !bytes.Equal(out.Bytes(), data) {
			t.Errorf("sizes %v: copied %d of %d, err %v, equal %v", sizes, n, len(data), err, bytes.Equal(out.Bytes(), data))
		}
	}
}

type nopCloser struct{ io.Writer }

func (nopCloser) Close() error { return nil }

// TestOutputWriteTo: WriteTo forwards a pipe byte for byte, dropping
// what came before the marker, and ends at EOF without an error.
func TestOutputWriteTo(t *testing.T) {
	bufs := &buffers{}
	o, w := pipeOutput(t, bufs)
	marker := "\x1edarling-sshd:test\x1e"
	o.head = &markerReader{r: o.f, marker: []byte(marker), log: slog.New(slog.DiscardHandler), bufs: bufs}
	data := randomBytes(5<<20 + 3)
	go func() {
		w.Write([]byte("noise from a login shell\n" + marker))
		w.Write(data)
		w.Close()
	}()
	var out bytes.Buffer
	n, err := o.WriteTo(&out)
	if err != nil || n != int64(len(data)) || !bytes.Equal(out.Bytes(), data) {
		t.Errorf("copied %d of %d, err %v", n, len(data), err)
	}
}

// TestOutputQuietBuffers: a stream that brings a few bytes at a time is
// read with quiet buffers only (sessions starting together must not each
// pin a copy buffer); one that fills them moves on to copy buffers.
func TestOutputQuietBuffers(t *testing.T) {
	for _, tc := range []struct {
		name    string
		writes  [][]byte
		wantBig bool
	}{
		{"quiet", [][]byte{[]byte("hello\n"), []byte("world\n")}, false},
		{"burst", [][]byte{randomBytes(1 << 20)}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bufs := &buffers{}
			big := 0
			bufs.big.New = func() any {
				big++
				b := make([]byte, copyBuffer)
				return &b
			}
			o, w := pipeOutput(t, bufs)
			growPipe(w)
			var want bytes.Buffer
			for _, p := range tc.writes {
				w.Write(p)
				want.Write(p)
			}
			w.Close()
			var out bytes.Buffer
			if _, err := o.WriteTo(&out); err != nil || !bytes.Equal(out.Bytes(), want.Bytes()) {
				t.Fatalf("copied %d of %d bytes, err %v", out.Len(), want.Len(), err)
			}
			if got := big > 0; got != tc.wantBig {
				t.Errorf("%d copy buffers taken, want some: %v", big, tc.wantBig)
			}
		})
	}
}

// TestOutputWriteToClosed: closing the pipe (CloseOutput) ends a WriteTo
// that waits for output.
func TestOutputWriteToClosed(t *testing.T) {
	o, _ := pipeOutput(t, &buffers{})
	done := make(chan error, 1)
	go func() {
		_, err := o.WriteTo(io.Discard)
		done <- err
	}()
	o.f.Close()
	if err := <-done; err == nil {
		t.Error("WriteTo on a closed pipe returned no error")
	}
}

// BenchmarkOutputWriteTo is the download path's pipe side: the command
// writes 256 KiB at a time, WriteTo forwards it.
func BenchmarkOutputWriteTo(b *testing.B) {
	o, w := pipeOutput(b, &buffers{})
	growPipe(w)
	chunk := make([]byte, 256<<10)
	b.SetBytes(int64(len(chunk)))
	go func() {
		for range b.N {
			w.Write(chunk)
		}
		w.Close()
	}()
	b.ResetTimer()
	if _, err := o.WriteTo(io.Discard); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkInputReadFrom is the upload path's pipe side: the channel
// returns 32 KiB packets, ReadFrom writes them to the command's stdin.
func BenchmarkInputReadFrom(b *testing.B) {
	r, w, err := os.Pipe()
	if err != nil {
		b.Fatal(err)
	}
	defer r.Close()
	growPipe(w)
	go io.Copy(io.Discard, r)
	in := &Input{w: w, bufs: &buffers{}}
	const packet = 32 << 10
	b.SetBytes(packet)
	src := &chunkReader{data: make([]byte, packet*b.N), sizes: []int{packet}}
	b.ResetTimer()
	if _, err := in.ReadFrom(src); err != nil {
		b.Fatal(err)
	}
	w.Close()
}

// peekChunks is a PeekSource holding its data in chunks of the given
// sizes, as a channel holds packets; it lends at most 64 at a time and
// records each call's bytes.
type peekChunks struct {
	chunks [][]byte
	lent   []int // bytes each PeekData lent
}

func (p *peekChunks) PeekData(bufs [][]byte, max int) ([][]byte, error) {
	n := 0
	for _, c := range p.chunks {
		if n >= max || len(bufs) == 64 {
			break
		}
		c = c[:min(len(c), max-n)]
		bufs = append(bufs, c)
		n += len(c)
	}
	if n == 0 {
		return bufs, io.EOF
	}
	p.lent = append(p.lent, n)
	return bufs, nil
}

func (p *peekChunks) DiscardData(n int) error {
	for n > 0 {
		r := min(n, len(p.chunks[0]))
		p.chunks[0] = p.chunks[0][r:]
		n -= r
		if len(p.chunks[0]) == 0 {
			p.chunks = p.chunks[1:]
		}
	}
	return nil
}

func (p *peekChunks) Read([]byte) (int, error) { panic("ReadFrom read a PeekSource") }

// TestInputWritesPeekedData: ReadFrom hands a PeekSource's chunks to a
// pipe with writev, byte-exact, through partial writes while the pipe is
// full (its reader is slow) and with more one-byte chunks than one
// writev takes; a copyBuffer at most per writev.
func TestInputWritesPeekedData(t *testing.T) {
	data := randomBytes(3<<20 + 200)
	src := &peekChunks{}
	rest := data
	for len(rest) > 0 {
		n := 32 << 10
		if len(src.chunks)%5 == 4 {
			n = 1 // runs of small packets, as typed input
		}
		n = min(n, len(rest))
		src.chunks = append(src.chunks, rest[:n])
		rest = rest[n:]
	}
	for range 300 {
		src.chunks = append(src.chunks, data[:1])
		data = append(data, data[0])
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	got := make(chan []byte)
	go func() {
		var b bytes.Buffer
		buf := make([]byte, 1000) // a slow reader: the pipe fills
		for {
			n, err := r.Read(buf)
			b.Write(buf[:n])
			if err != nil {
				break
			}
		}
		got <- b.Bytes()
	}()
	in := &Input{w: w, bufs: &buffers{}}
	n, err := in.ReadFrom(src)
	w.Close()
	if err != nil || n != int64(len(data)) {
		t.Fatalf("ReadFrom = %d, %v; want %d", n, err, len(data))
	}
	if !bytes.Equal(<-got, data) {
		t.Fatal("the pipe got other bytes")
	}
	for _, l := range src.lent {
		if l > copyBuffer {
			t.Fatalf("a writev of %d bytes, more than %d", l, copyBuffer)
		}
	}
}

// TestNonblocking: writevFrom's raw writev is taken only for a
// non-blocking file: a pipe from os.Pipe, not one Fd made blocking.
func TestNonblocking(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	if nonblocking(w) == nil {
		t.Fatal("a pipe from os.Pipe taken for blocking")
	}
	w.Fd() // puts it in blocking mode
	if nonblocking(w) != nil {
		t.Fatal("a blocking pipe taken for non-blocking")
	}
	if nonblocking(&bytes.Buffer{}) != nil {
		t.Fatal("a buffer taken for a file")
	}
}
