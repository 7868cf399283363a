package sshserver

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"
)

// openSSHSFTPServer is Debian's sftp-server (openssh-server): the oracle
// these tests hold the server's SFTP to.
const openSSHSFTPServer = "/usr/lib/openssh/sftp-server"

// sftpStream starts the sftp subsystem on a new connection to s and
// returns its stdin and stdout.
func sftpStream(t *testing.T, s *fakeServer) (io.WriteCloser, io.Reader) {
	t.Helper()
	c := s.dial(t)
	sess, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sess.Close() })
	in, err := sess.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := sess.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := sess.RequestSubsystem("sftp"); err != nil {
		t.Fatal(err)
	}
	return in, out
}

// openSSHStream starts OpenSSH's sftp-server in dir.
func openSSHStream(t *testing.T, dir string) (io.WriteCloser, io.Reader) {
	t.Helper()
	if _, err := os.Stat(openSSHSFTPServer); err != nil {
		t.Skipf("%s is needed (make test installs openssh-server): %v", openSSHSFTPServer, err)
	}
	cmd := exec.Command(openSSHSFTPServer)
	cmd.Dir = dir
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		in.Close()
		cmd.Wait()
	})
	return in, out
}

// rawSFTP speaks SFTP packet by packet, so that a test can send requests
// without waiting for their replies, as OpenSSH's sftp does.
type rawSFTP struct {
	t      *testing.T
	w      io.Writer
	r      io.Reader
	next   uint32
	early  map[uint32][]byte // replies read while waiting for another
	exts   map[string]string // the server's extensions
	prefix string            // the path of the server's root
}

// fxp packet types the tests send and read.
const (
	fxpInit     = 1
	fxpClose    = 4
	fxpOpendir  = 11
	fxpStatus   = 101
	fxpStatusOK = 0
)

// SSH_FXF_* open flags.
const (
	fxfRead   = 0x1
	fxfWrite  = 0x2
	fxfAppend = 0x4
	fxfCreat  = 0x8
	fxfTrunc  = 0x10
)

func newRawSFTP(t *testing.T, w io.Writer, r io.Reader, prefix string) *rawSFTP {
	c := &rawSFTP{t: t, w: w, r: r, next: 1, early: map[uint32][]byte{}, exts: map[string]string{}, prefix: prefix}
	c.put(fxpInit, u32(3))
	typ, body := c.read()
	if typ != fxpVersion {
		t.Fatalf("init: reply type %d", typ)
	}
	for b := body[4:]; len(b) > 0; {
		name, rest, ok1 := sshString(b)
		value, rest, ok2 := sshString(rest)
		if !ok1 || !ok2 {
			t.Fatalf("version packet: %x", body)
		}
		c.exts[string(name)] = string(value)
		b = rest
	}
	return c
}

func u32(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }
func u64(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }
func str(s string) []byte { return append(u32(uint32(len(s))), s...) }

// put sends one packet.
func (c *rawSFTP) put(typ byte, fields ...[]byte) {
	c.t.Helper()
	body := slices.Concat(fields...)
	pkt := append(u32(uint32(1+len(body))), typ)
	if _, err := c.w.Write(append(pkt, body...)); err != nil {
		c.t.Fatalf("send: %v", err)
	}
}

// read reads one packet.
func (c *rawSFTP) read() (byte, []byte) {
	c.t.Helper()
	var head [5]byte
	if _, err := io.ReadFull(c.r, head[:]); err != nil {
		c.t.Fatalf("read a reply: %v", err)
	}
	body := make([]byte, binary.BigEndian.Uint32(head[:])-1)
	if _, err := io.ReadFull(c.r, body); err != nil {
		c.t.Fatalf("read a reply: %v", err)
	}
	return head[4], body
}

// request sends a request and returns its id; reply reads its reply.
func (c *rawSFTP) request(typ byte, fields ...[]byte) uint32 {
	c.t.Helper()
	id := c.next
	c.next++
	c.put(typ, append([][]byte{u32(id)}, fields...)...)
	return id
}

// reply returns the reply to request id: its type and its body after the
// id.
func (c *rawSFTP) reply(id uint32) (byte, []byte) {
	c.t.Helper()
	if b, ok := c.early[id]; ok {
		delete(c.early, id)
		return b[0], b[1:]
	}
	for {
		typ, body := c.read()
		got := binary.BigEndian.Uint32(body)
		if got == id {
			return typ, body[4:]
		}
		c.early[got] = append([]byte{typ}, body[4:]...)
	}
}

// status returns the status code of request id's reply.
func (c *rawSFTP) status(id uint32) uint32 {
	c.t.Helper()
	typ, body := c.reply(id)
	if typ != fxpStatus {
		c.t.Fatalf("request %d: reply type %d, want a status", id, typ)
	}
	return binary.BigEndian.Uint32(body)
}

// open opens a file; attrs are the attribute flags and attributes.
func (c *rawSFTP) open(name string, pflags uint32, attrs ...[]byte) (string, uint32) {
	c.t.Helper()
	if len(attrs) == 0 {
		attrs = [][]byte{u32(0)}
	}
	id := c.request(fxpOpen, append([][]byte{str(c.prefix + name), u32(pflags)}, attrs...)...)
	typ, body := c.reply(id)
	if typ == fxpStatus {
		return "", binary.BigEndian.Uint32(body)
	}
	h, _, _ := sshString(body)
	return string(h), fxpStatusOK
}

func (c *rawSFTP) close(h string) uint32 { return c.status(c.request(fxpClose, str(h))) }

func (c *rawSFTP) copyData(from string, readOff, readLen uint64, to string, writeOff uint64) uint32 {
	return c.status(c.request(fxpExtended, str("copy-data"), str(from), u64(readOff), u64(readLen), str(to), u64(writeOff)))
}

// sides runs scenario against OpenSSH's sftp-server and against the
// server, each on a folder made by setup, and fails unless both answer
// alike and leave the same files, modes included.
func sides(t *testing.T, setup func(dir string), scenario func(c *rawSFTP) []string) {
	t.Helper()
	oracle := t.TempDir()
	setup(oracle)
	ow, or := openSSHStream(t, oracle)
	want := scenario(newRawSFTP(t, ow, or, oracle+"/"))

	f := newFakeLauncher(t)
	setup(f.dir)
	s := startFake(t, f, nil)
	w, r := sftpStream(t, s)
	c := newRawSFTP(t, w, r, "/")
	if c.exts["copy-data"] != "1" {
		t.Errorf("copy-data is not offered: %v", c.exts)
	}
	got := scenario(c)
	if !slices.Equal(got, want) {
		t.Errorf("replies:\n%s\nOpenSSH's sftp-server:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if g, w := tree(t, f.dir), tree(t, oracle); g != w {
		t.Errorf("files:\n%s\nOpenSSH's sftp-server leaves:\n%s", g, w)
	}
}

// tree describes the files of dir: names, modes, sizes and a digest.
func tree(t *testing.T, dir string) string {
	t.Helper()
	var b strings.Builder
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		fi, err := os.Lstat(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		data, _ := os.ReadFile(filepath.Join(dir, e.Name()))
		fmt.Fprintf(&b, "%s %v %d %s\n", e.Name(), fi.Mode(), fi.Size(), digest(data))
	}
	return b.String()
}

func digest(b []byte) string {
	if len(b) <= 16 {
		return fmt.Sprintf("%q", b)
	}
	return fmt.Sprintf("%q…%x", b[:8], crc(b))
}

func crc(b []byte) uint32 {
	var h uint32 = 2166136261
	for _, c := range b {
		h = (h ^ uint32(c)) * 16777619
	}
	return h
}

// chunks returns n different pieces of size bytes each.
func chunks(n, size int) [][]byte {
	r := rand.NewChaCha8([32]byte{4})
	out := make([][]byte, n)
	for i := range out {
		out[i] = make([]byte, size)
		r.Read(out[i])
	}
	return out
}

// TestSFTPAppendLikeOpenSSH: a file opened with SSH_FXF_APPEND gets
// every write at its end, in the order sent, whatever offset the client
// names, as with OpenSSH's sftp-server: 256 writes sent without waiting,
// all at offset 0 (as a client that counts from 0 sends them), onto an
// existing file; then an append handle opened read-write, and a created
// file's permissions from the open's attributes (with size and owner
// before them). On the code before the wire, put -a's open panicked.
func TestSFTPAppendLikeOpenSSH(t *testing.T) {
	pieces := chunks(256, 1000)
	sides(t, func(dir string) {
		os.WriteFile(filepath.Join(dir, "log"), []byte("existing\n"), 0o644)
		os.WriteFile(filepath.Join(dir, "rw"), []byte("0123456789"), 0o644)
	}, func(c *rawSFTP) []string {
		var out []string
		h, st := c.open("log", fxfWrite|fxfAppend)
		out = append(out, fmt.Sprintf("open log: %d", st))
		var ids []uint32
		for _, p := range pieces {
			ids = append(ids, c.request(fxpWrite, str(h), u64(0), str(string(p))))
		}
		for _, id := range ids {
			if st := c.status(id); st != fxpStatusOK {
				out = append(out, fmt.Sprintf("write %d: %d", id, st))
			}
		}
		out = append(out, fmt.Sprintf("close log: %d", c.close(h)))

		h, st = c.open("rw", fxfRead|fxfWrite|fxfAppend)
		out = append(out, fmt.Sprintf("open rw: %d", st))
		out = append(out, fmt.Sprintf("write rw: %d", c.status(c.request(fxpWrite, str(h), u64(3), str("abc")))))
		typ, body := c.reply(c.request(5 /* read */, str(h), u64(2), u32(100)))
		out = append(out, fmt.Sprintf("read rw: %d %q", typ, body))
		out = append(out, fmt.Sprintf("close rw: %d", c.close(h)))

		// size 5, uid and gid, permissions 0640: the permissions are read
		// past the others; only they matter on open.
		attrs := slices.Concat(u32(attrSize|attrUIDGID|attrPermissions), u64(5), u32(4242), u32(4343), u32(0o640))
		h, st = c.open("new", fxfWrite|fxfCreat|fxfAppend, attrs)
		out = append(out, fmt.Sprintf("open new: %d", st))
		out = append(out, fmt.Sprintf("write new: %d", c.status(c.request(fxpWrite, str(h), u64(1000), str("at the start")))))
		out = append(out, fmt.Sprintf("close new: %d", c.close(h)))
		h, st = c.open("plain", fxfWrite|fxfCreat|fxfTrunc)
		out = append(out, fmt.Sprintf("open plain: %d", st))
		out = append(out, fmt.Sprintf("close plain: %d", c.close(h)))
		return out
	})
}

// TestSFTPCopyDataLikeOpenSSH: copy-data (OpenSSH's sftp cp) is offered
// and copies as OpenSSH's sftp-server does, with its statuses: to the
// end, a range, past the end within one piece and beyond it, onto an
// offset, into a file opened to append, and the refusals (same handle,
// an unknown handle, a folder's handle). On the code before the wire
// copy-data was not offered and got "unsupported".
func TestSFTPCopyDataLikeOpenSSH(t *testing.T) {
	src := chunks(1, 300<<10)[0]
	sides(t, func(dir string) {
		os.WriteFile(filepath.Join(dir, "src"), src, 0o644)
		os.WriteFile(filepath.Join(dir, "log"), []byte("head\n"), 0o644)
		os.Mkdir(filepath.Join(dir, "d"), 0o755)
	}, func(c *rawSFTP) []string {
		var out []string
		log := func(f string, a ...any) { out = append(out, fmt.Sprintf(f, a...)) }
		from, st := c.open("src", fxfRead)
		log("open src: %d", st)
		mk := func(name string, pflags uint32) string {
			h, st := c.open(name, pflags, u32(attrPermissions), u32(0o600))
			log("open %s: %d", name, st)
			return h
		}
		all := mk("all", fxfWrite|fxfCreat|fxfTrunc)
		log("copy all: %d", c.copyData(from, 0, 0, all, 0))
		part := mk("part", fxfWrite|fxfCreat|fxfTrunc)
		log("copy range: %d", c.copyData(from, 1000, 70000, part, 10))
		log("copy past the end, one piece: %d", c.copyData(from, uint64(len(src))-10, 1000, part, 0))
		log("copy past the end, pieces: %d", c.copyData(from, uint64(len(src))-10, 200000, part, 0))
		log("copy from beyond the end: %d", c.copyData(from, uint64(len(src))+5, 10, part, 0))
		log("copy to the same handle: %d", c.copyData(from, 0, 0, from, 0))
		log("copy from an unknown handle: %d", c.copyData("nope", 0, 0, part, 0))
		app, st := c.open("log", fxfWrite|fxfAppend)
		log("open log: %d", st)
		log("copy into an append handle: %d", c.copyData(from, 5, 100, app, 3))
		d := c.request(fxpOpendir, str(c.prefix+"d"))
		typ, body := c.reply(d)
		dh, _, _ := sshString(body)
		log("opendir: %d", typ)
		log("copy from a folder: %d", c.copyData(string(dh), 0, 0, part, 0))
		for _, h := range []string{from, all, part, app, string(dh)} {
			log("close: %d", c.close(h))
		}
		return out
	})
}

// TestSFTPAppendKeepsOrder: many appends through pkg/sftp's parallel
// workers, with reads on the same connection, land in order.
func TestSFTPAppendKeepsOrder(t *testing.T) {
	f := newFakeLauncher(t)
	s := startFake(t, f, nil)
	w, r := sftpStream(t, s)
	c := newRawSFTP(t, w, r, "/")
	pieces := chunks(2000, 97)
	h, st := c.open("seq", fxfWrite|fxfCreat|fxfAppend)
	if st != fxpStatusOK {
		t.Fatalf("open: %d", st)
	}
	var ids []uint32
	for i, p := range pieces {
		ids = append(ids, c.request(fxpWrite, str(h), u64(uint64(i)*7), str(string(p))))
	}
	for _, id := range ids {
		if st := c.status(id); st != fxpStatusOK {
			t.Fatalf("write %d: status %d", id, st)
		}
	}
	if st := c.close(h); st != fxpStatusOK {
		t.Fatalf("close: %d", st)
	}
	got, _ := os.ReadFile(filepath.Join(f.dir, "seq"))
	if want := bytes.Join(pieces, nil); !bytes.Equal(got, want) {
		t.Errorf("appended %d bytes, not the %d sent in order", len(got), len(want))
	}
}

// TestSFTPAppendClosedWhileWaiting: a write that waits for its turn at a
// file closed meanwhile fails instead of waiting for ever.
func TestSFTPAppendClosedWhileWaiting(t *testing.T) {
	a := newAppendOrder()
	done := make(chan error, 1)
	go func() {
		var stamped uint64 = 5 | stampBit
		_, err := a.write(nil, []byte("x"), int64(stamped))
		done <- err
	}()
	a.close()
	select {
	case err := <-done:
		if err == nil {
			t.Error("a write after close succeeded")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the write still waits")
	}
}

// pipeChannel is a gossh.Channel on a reader and a writer.
type pipeChannel struct {
	gossh.Channel
	r io.Reader
	w io.Writer
}

func (c pipeChannel) Read(p []byte) (int, error)  { return c.r.Read(p) }
func (c pipeChannel) Write(p []byte) (int, error) { return c.w.Write(p) }

// oneByte reads one byte at a time.
type oneByte struct{ r io.Reader }

func (o oneByte) Read(p []byte) (int, error) { return o.r.Read(p[:min(1, len(p))]) }

func packet(typ byte, fields ...[]byte) []byte {
	body := slices.Concat(fields...)
	return slices.Concat(u32(uint32(1+len(body))), []byte{typ}, body)
}

// TestSFTPWireSplits: the wire's rewriting does not depend on how the
// packets are cut into reads and writes: a byte at a time, or pkg/sftp's
// header and payload, or all at once, the client's packets reach pkg/sftp
// and the replies reach the client as they would whole.
func TestSFTPWireSplits(t *testing.T) {
	files, err := newOpenFiles()
	if err != nil {
		t.Fatal(err)
	}
	// Replies: VERSION, a HANDLE for request 7, data, a second VERSION
	// (not changed), a status.
	replies := [][]byte{
		packet(fxpVersion, u32(3), str("posix-rename@openssh.com"), str("1")),
		packet(fxpHandle, u32(7), str("h7")),
		packet(103, u32(8), str(strings.Repeat("d", 40000))),
		packet(fxpVersion, u32(3)),
		packet(fxpStatus, u32(9), u32(0), str(""), str("")),
	}
	want := slices.Concat(
		packet(fxpVersion, u32(3), str("posix-rename@openssh.com"), str("1"), str("copy-data"), str("1")),
		slices.Concat(replies[1:]...))
	for _, cut := range []int{1, 3, 5, 13, 1 << 20} {
		var out bytes.Buffer
		w := &sftpWire{ch: pipeChannel{w: &out}, files: files, log: discardLog(), gone: func() {}}
		af := &sftpFile{files: files, app: newAppendOrder()}
		files.opened(7, af)
		stream := slices.Concat(replies...)
		for len(stream) > 0 {
			k := min(cut, len(stream))
			if _, err := w.Write(stream[:k]); err != nil {
				t.Fatal(err)
			}
			stream = stream[k:]
		}
		if !bytes.Equal(out.Bytes(), want) {
			t.Errorf("writes of %d: out %q…, want %q…", cut, out.Bytes()[:min(80, out.Len())], want[:80])
		}
		if files.byHandle("h7") != af {
			t.Errorf("writes of %d: handle h7 not noted", cut)
		}

		// Requests: an open, a write to the append handle, one to another
		// handle, copy-data, another extended request.
		reqs := [][]byte{
			packet(fxpOpen, u32(11), str("/f"), u32(fxfWrite|fxfAppend), u32(attrPermissions), u32(0o600)),
			packet(fxpWrite, u32(12), str("h7"), u64(99), str("appended")),
			packet(fxpWrite, u32(13), str("hx"), u64(99), str("placed")),
			packet(fxpExtended, u32(14), str("copy-data"), str("h7"), u64(1), u64(2), str("hx"), u64(3)),
			packet(fxpExtended, u32(15), str("posix-rename@openssh.com"), str("a"), str("b")),
		}
		wantIn := slices.Concat(
			packet(fxpOpen, u32(11), str("/f"), u32(fxfWrite|fxfAppend), u32(attrPermissions), u32(11), u32(attrPermissions), u32(0o600)),
			packet(fxpWrite, u32(12), str("h7"), u64(0|stampBit), str("appended")),
			reqs[2],
			packet(fxpExtended, u32(14), str("hardlink@openssh.com"), str(files.copyPath(14)), str("/")),
			reqs[4])
		var r io.Reader = bytes.NewReader(slices.Concat(reqs...))
		if cut == 1 {
			r = oneByte{r}
		}
		w.ch = pipeChannel{r: r}
		var in []byte
		buf := make([]byte, min(cut, 4096))
		for {
			n, err := w.Read(buf)
			in = append(in, buf[:n]...)
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
		}
		if !bytes.Equal(in, wantIn) {
			t.Errorf("reads of %d: in %x\nwant %x", cut, in, wantIn)
		}
		c, ok := files.takeCopy(files.copyPath(14))
		if !ok || c.from != af || c.to != nil || c.readOff != 1 || c.readLen != 2 || c.writeOff != 3 {
			t.Errorf("reads of %d: copy-data kept as %+v %v", cut, c, ok)
		}
		af.Close()
	}
}

func discardLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// FuzzSFTPWireRead: whatever the client sends, the wire neither panics
// nor loses or changes bytes of packets it does not rewrite (here none
// but opens and extended requests: no handle appends).
func FuzzSFTPWireRead(f *testing.F) {
	f.Add(packet(fxpWrite, u32(1), str("h"), u64(5), str("data")))
	f.Add(slices.Concat(packet(fxpOpen, u32(1), str("/f"), u32(fxfWrite|fxfAppend), u32(0)), packet(fxpWrite, u32(2), str("h"), u64(0), str("x"))))
	f.Add(packet(fxpExtended, u32(3), str("copy-data"), str("a"), u64(0), u64(0), str("b"), u64(0)))
	f.Add(packet(fxpExtended, u32(3), str("copy-data"), str("a")))
	f.Add(packet(fxpWrite, u32(1), u32(1<<30)))
	f.Add(append(u32(maxPacket+1), 1, 2, 3))
	f.Add([]byte{0, 0, 0, 0, 6})
	f.Fuzz(func(t *testing.T, in []byte) {
		files, err := newOpenFiles()
		if err != nil {
			t.Fatal(err)
		}
		var logb bytes.Buffer
		w := &sftpWire{ch: pipeChannel{r: bytes.NewReader(in)}, files: files,
			log: slog.New(slog.NewTextHandler(&logb, nil)), gone: func() {}}
		out, _ := io.ReadAll(w)
		if strings.Contains(logb.String(), "panic") {
			t.Fatalf("the wire panicked on %x:\n%s", in, logb.String())
		}
		rewritten := false
		for b := in; len(b) >= 5; {
			n := int(binary.BigEndian.Uint32(b))
			if n == 0 || n > maxPacket {
				break
			}
			if b[4] == fxpOpen || b[4] == fxpExtended {
				rewritten = true
			}
			if 4+n > len(b) {
				break
			}
			b = b[4+n:]
		}
		if !rewritten && !bytes.HasPrefix(in, out) {
			t.Errorf("in %x\nout %x", in, out)
		}
	})
}

// FuzzSFTPWireWrite: however pkg/sftp's output is cut into writes, the
// wire neither panics nor changes bytes but the first VERSION packet's.
func FuzzSFTPWireWrite(f *testing.F) {
	f.Add(packet(fxpHandle, u32(7), str("h7")), uint8(3))
	f.Add(slices.Concat(packet(103, u32(8), str("data")), packet(fxpHandle, u32(1), u32(1<<31))), uint8(1))
	f.Add([]byte{0, 0, 0, 1, fxpHandle, 0, 0, 0, 0, 0, 0}, uint8(5))
	f.Fuzz(func(t *testing.T, in []byte, cut uint8) {
		files, err := newOpenFiles()
		if err != nil {
			t.Fatal(err)
		}
		var logb, out bytes.Buffer
		w := &sftpWire{ch: pipeChannel{w: &out}, files: files,
			log: slog.New(slog.NewTextHandler(&logb, nil)), gone: func() {}}
		k := int(cut) + 1
		for b := in; len(b) > 0; b = b[min(k, len(b)):] {
			w.Write(b[:min(k, len(b))])
		}
		if strings.Contains(logb.String(), "panic") {
			t.Fatalf("the wire panicked on %x:\n%s", in, logb.String())
		}
		if !bytes.Contains(in, []byte{fxpVersion}) && !bytes.HasPrefix(in, out.Bytes()) {
			t.Errorf("in %x\nout %x", in, out.Bytes())
		}
	})
}
