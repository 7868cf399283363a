package sshserver

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"sync"

	gossh "golang.org/x/crypto/ssh"
)

// The SFTP wire between the channel and pkg/sftp's RequestServer.
//
// pkg/sftp v1.13.12 gives its handlers less than OpenSSH's sftp-server
// uses, and no way to add an extension. The wire reads and writes whole
// packets (draft-ietf-secsh-filexfer-02 framing: a uint32 length, a type
// byte, the body) and changes four of them, in process:
//
//   - SSH_FXP_VERSION, the server's first packet, also offers copy-data
//     (OpenSSH's sftp uses it for cp);
//   - SSH_FXP_OPEN: pkg/sftp keeps the open flags where the attribute
//     flags were (Request.Flags) and drops the attribute flags, so the
//     attributes cannot be read. The wire puts the request id and the
//     attribute flags in front of the attributes (Request.Attrs), where
//     rootFS reads them (openAttrs);
//   - SSH_FXP_WRITE to a handle opened with SSH_FXF_APPEND: its offset is
//     replaced by the write's number in the order the client sent it, top
//     bit set, so that the file writes at its end in that order (pkg/sftp
//     runs writes on several workers at once; appendOrder);
//   - the copy-data extended request: its fields are kept aside and it
//     goes on as a hardlink@openssh.com request whose old path names them
//     (copyPath), which pkg/sftp hands to rootFS.Filecmd in order with the
//     session's other requests and answers with a status.
//
// Every other byte passes unchanged; data packets are not copied.
type sftpWire struct {
	ch    gossh.Channel
	files *openFiles
	log   *slog.Logger
	// gone ends the connection: a panic on pkg/sftp's sending goroutine.
	gone func()
	hook func(string)

	// Read side: only pkg/sftp's reading goroutine uses these.
	rpend []byte // bytes of a packet's start, as rewritten, not yet read
	rpass int    // bytes of the current packet to pass as they come
	rhead [5]byte

	// Write side: pkg/sftp serialises its sends; wmu keeps the race
	// detector and a future pkg/sftp honest.
	wmu      sync.Mutex
	whead    []byte // the current outgoing packet's start
	wleft    int    // bytes of the current outgoing packet to pass as they come
	wversion bool   // the VERSION packet went out
}

// SFTP packet types and attribute flags the wire and rootFS use
// (draft-ietf-secsh-filexfer-02).
const (
	fxpVersion  = 2
	fxpOpen     = 3
	fxpWrite    = 6
	fxpHandle   = 102
	fxpExtended = 200

	attrSize        = 0x1
	attrUIDGID      = 0x2
	attrPermissions = 0x4

	// maxPacket is the longest packet pkg/sftp and OpenSSH's sftp-server
	// accept.
	maxPacket = 256 << 10
	// maxHandle bounds a handle the wire reads (the draft: 256 bytes).
	maxHandle = 256
	// stampBit marks a write offset the wire replaced with an append
	// number.
	stampBit = 1 << 63
)

func newSFTPWire(ch gossh.Channel, log *slog.Logger, gone func(), hook func(string)) (*sftpWire, error) {
	files, err := newOpenFiles()
	if err != nil {
		return nil, err
	}
	return &sftpWire{ch: ch, files: files, log: log, gone: gone, hook: hook}, nil
}

// Close hides the channel's Close from pkg/sftp's RequestServer, which
// closes the channel itself when it is done: the exit status must still
// go out first, or scp and sftp exit 255.
func (w *sftpWire) Close() error { return nil }

// Read hands pkg/sftp the client's packets, rewritten where the wire
// changes them. It runs on the session's SFTP goroutine; a panic ends the
// SFTP session with an error.
func (w *sftpWire) Read(p []byte) (n int, err error) {
	defer contain(w.log, "sftp read", func() { n, err = 0, errors.New("sftp: internal error reading a request") })
	if w.hook != nil {
		w.hook("sftp.read")
	}
	for len(w.rpend) == 0 && w.rpass == 0 {
		if err := w.readPacket(); err != nil {
			return 0, err
		}
	}
	if len(w.rpend) > 0 {
		n = copy(p, w.rpend)
		w.rpend = w.rpend[n:]
		return n, nil
	}
	if len(p) > w.rpass {
		p = p[:w.rpass]
	}
	n, err = w.ch.Read(p)
	w.rpass -= n
	if err == io.EOF && n == 0 {
		err = io.ErrUnexpectedEOF
	}
	return n, err
}

// readPacket reads the start of the next packet into rpend, rewritten if
// the wire changes it, and leaves the rest to pass in rpass.
func (w *sftpWire) readPacket() error {
	if _, err := io.ReadFull(w.ch, w.rhead[:4]); err != nil {
		return err // io.EOF between packets: the client is done
	}
	length := int(binary.BigEndian.Uint32(w.rhead[:4]))
	if length == 0 || length > maxPacket {
		// pkg/sftp refuses it.
		w.rpend, w.rpass = w.rhead[:4], length
		return nil
	}
	if _, err := io.ReadFull(w.ch, w.rhead[4:5]); err != nil {
		return unexpected(err)
	}
	switch w.rhead[4] {
	case fxpOpen, fxpExtended:
		pkt := make([]byte, 4+length)
		copy(pkt, w.rhead[:5])
		if _, err := io.ReadFull(w.ch, pkt[5:]); err != nil {
			return unexpected(err)
		}
		if w.rhead[4] == fxpOpen {
			w.rpend = w.rewriteOpen(pkt)
		} else {
			w.rpend = w.rewriteExtended(pkt)
		}
		return nil
	case fxpWrite:
		return w.readWrite(length)
	}
	w.rpend, w.rpass = w.rhead[:5], length-1
	return nil
}

func unexpected(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// rewriteOpen puts the request id and the attribute flags in front of
// the open's attributes: id, path, pflags, attribute flags, attributes
// become id, path, pflags, attribute flags, id, attribute flags,
// attributes. A packet too short to parse is left for pkg/sftp to refuse.
func (w *sftpWire) rewriteOpen(pkt []byte) []byte {
	b := pkt[5:]
	if len(b) < 8 {
		return pkt
	}
	id := b[:4]
	pathLen := int(binary.BigEndian.Uint32(b[4:8]))
	at := 8 + pathLen + 4 // the attribute flags
	if pathLen > len(b) || at+4 > len(b) {
		return pkt
	}
	out := make([]byte, 0, len(pkt)+8)
	out = append(out, pkt[:5+at+4]...)
	out = append(out, id...)
	out = append(out, b[at:at+4]...)
	out = append(out, b[at+4:]...)
	binary.BigEndian.PutUint32(out, uint32(len(out)-4))
	return out
}

// readWrite reads a write's fields up to its data (id, handle, offset,
// data length) and numbers it if its handle appends.
func (w *sftpWire) readWrite(length int) error {
	var fixed [8]byte // id, handle length
	if length-1 < len(fixed) {
		// Too short to be a write: pkg/sftp refuses it.
		w.rpend, w.rpass = w.rhead[:5], length-1
		return nil
	}
	if _, err := io.ReadFull(w.ch, fixed[:]); err != nil {
		return unexpected(err)
	}
	hl := int(binary.BigEndian.Uint32(fixed[4:]))
	headLen := 1 + 8 + hl + 8 + 4 // type, id and handle length, handle, offset, data length
	if hl > maxHandle || headLen > length {
		w.rpend = append(append([]byte(nil), w.rhead[:5]...), fixed[:]...)
		w.rpass = length - 1 - len(fixed)
		return nil
	}
	head := make([]byte, 4+headLen)
	copy(head, w.rhead[:5])
	copy(head[5:], fixed[:])
	if _, err := io.ReadFull(w.ch, head[13:]); err != nil {
		return unexpected(err)
	}
	dataLen := int(binary.BigEndian.Uint32(head[len(head)-4:]))
	if dataLen <= length-headLen {
		// A write pkg/sftp will run (it ignores bytes after the data), so
		// its number is taken. One whose data is cut short ends the
		// session in pkg/sftp, and no later write waits for it.
		handle := string(head[13 : 13+hl])
		if f := w.files.byHandle(handle); f != nil && f.app != nil {
			binary.BigEndian.PutUint64(head[13+hl:], f.app.issue()|stampBit)
		}
	}
	w.rpend, w.rpass = head, length-headLen
	return nil
}

// rewriteExtended turns a copy-data request into the hardlink request
// rootFS serves it as; other extended requests pass unchanged.
func (w *sftpWire) rewriteExtended(pkt []byte) []byte {
	b := pkt[5:]
	if len(b) < 4 {
		return pkt
	}
	id := binary.BigEndian.Uint32(b)
	name, rest, ok := sshString(b[4:])
	if !ok || string(name) != "copy-data" {
		return pkt
	}
	w.files.park(id, w.parseCopy(rest))
	out := make([]byte, 4, 128) // the length, set below
	out = append(out, fxpExtended)
	out = binary.BigEndian.AppendUint32(out, id)
	for _, s := range []string{"hardlink@openssh.com", w.files.copyPath(id), "/"} {
		out = binary.BigEndian.AppendUint32(out, uint32(len(s)))
		out = append(out, s...)
	}
	binary.BigEndian.PutUint32(out, uint32(len(out)-4))
	return out
}

// parseCopy reads copy-data's fields: read handle, read offset, read
// length, write handle, write offset. The files are taken now, in the
// order of the client's requests; so is the append turn of a write
// handle that appends.
func (w *sftpWire) parseCopy(b []byte) *copyData {
	rh, b, ok1 := sshString(b)
	if !ok1 || len(b) < 16 {
		return &copyData{bad: true}
	}
	c := &copyData{readOff: binary.BigEndian.Uint64(b), readLen: binary.BigEndian.Uint64(b[8:])}
	wh, b, ok2 := sshString(b[16:])
	if !ok2 || len(b) < 8 {
		return &copyData{bad: true}
	}
	c.writeOff = binary.BigEndian.Uint64(b)
	c.sameHandle = string(rh) == string(wh)
	c.from, c.to = w.files.byHandle(string(rh)), w.files.byHandle(string(wh))
	if c.to != nil && c.to.app != nil {
		c.seq, c.numbered = c.to.app.issue(), true
	}
	return c
}

// sshString splits an SSH string off b.
func sshString(b []byte) (s, rest []byte, ok bool) {
	if len(b) < 4 {
		return nil, b, false
	}
	n := binary.BigEndian.Uint32(b)
	if uint64(n) > uint64(len(b)-4) {
		return nil, b, false
	}
	return b[4 : 4+n], b[4+n:], true
}

// Write passes pkg/sftp's packets to the channel. It offers copy-data in
// the VERSION packet and notes each handle pkg/sftp gives an open file.
// It runs on pkg/sftp's sending goroutine, which the server does not
// start: a panic here ends the connection.
func (w *sftpWire) Write(p []byte) (n int, err error) {
	w.wmu.Lock()
	defer w.wmu.Unlock()
	defer contain(w.log, "sftp send", func() {
		n, err = 0, errors.New("sftp: internal error sending a reply")
		w.gone()
	})
	if w.hook != nil {
		w.hook("sftp.send")
	}
	if err := w.send(p); err != nil {
		return 0, err
	}
	return len(p), nil
}

// send writes p on: what passes unchanged in one write per call, as
// pkg/sftp wrote it, so that a reply's header and data do not become
// more SSH packets than before; a VERSION or HANDLE packet once it is
// whole.
func (w *sftpWire) send(p []byte) error {
	start := 0 // p[start:i] passes unchanged and is not written yet
	flush := func(end int) error {
		if end > start {
			if _, err := w.ch.Write(p[start:end]); err != nil {
				return err
			}
		}
		start = end
		return nil
	}
	for i := 0; i < len(p); {
		if w.wleft > 0 {
			k := min(len(p)-i, w.wleft)
			w.wleft -= k
			i += k
			continue
		}
		if len(w.whead) == 0 && len(p)-i >= 5 && !w.holds(p[i:i+5]) {
			w.wleft = 4 + int(binary.BigEndian.Uint32(p[i:]))
			continue
		}
		// A packet the wire reads whole, or a start split between writes.
		if err := flush(i); err != nil {
			return err
		}
		need := 5
		if len(w.whead) >= 5 && w.holds(w.whead) {
			need = 4 + int(binary.BigEndian.Uint32(w.whead))
		}
		k := min(len(p)-i, need-len(w.whead))
		w.whead = append(w.whead, p[i:i+k]...)
		i += k
		start = i
		if len(w.whead) < need || (need == 5 && w.holds(w.whead)) {
			continue
		}
		length := int(binary.BigEndian.Uint32(w.whead))
		if _, err := w.ch.Write(w.observe(w.whead)); err != nil {
			return err
		}
		w.wleft = 4 + length - len(w.whead)
		w.whead = w.whead[:0]
	}
	return flush(len(p))
}

// holds reports whether the wire reads the packet that starts with head
// (its length and type) whole before it goes on: the first VERSION, and
// each HANDLE.
func (w *sftpWire) holds(head []byte) bool {
	switch n := binary.BigEndian.Uint32(head); {
	case n > 4096:
		return false
	case head[4] == fxpVersion:
		return !w.wversion && n >= 1+4 // type, version
	case head[4] == fxpHandle:
		return n >= 1+4+4 // type, id, handle length
	}
	return false
}

// observe looks at a whole VERSION or HANDLE packet, or at the start of
// another, and returns what goes out.
func (w *sftpWire) observe(head []byte) []byte {
	switch head[4] {
	case fxpVersion:
		if w.wversion {
			return head
		}
		w.wversion = true
		// The extension pairs follow the version; one more.
		out := append([]byte(nil), head...)
		for _, s := range []string{"copy-data", "1"} {
			out = binary.BigEndian.AppendUint32(out, uint32(len(s)))
			out = append(out, s...)
		}
		binary.BigEndian.PutUint32(out, uint32(len(out)-4))
		return out
	case fxpHandle:
		if len(head) >= 13 {
			if handle, _, ok := sshString(head[9:]); ok {
				w.files.handled(binary.BigEndian.Uint32(head[5:]), string(handle))
			}
		}
	}
	return head
}

// openFiles are an SFTP session's open files by the handle pkg/sftp gave
// them (copy-data and appends name files by handle), and copy-data
// requests on their way to rootFS.
type openFiles struct {
	token string // makes a copy-data path no client can send

	mu      sync.Mutex
	pending map[uint32]*pendingOpen // opened files whose HANDLE reply has not gone out, by request id
	handles map[string]*sftpFile
	copies  map[uint32][]*copyData // by request id, in the order they came
}

// pendingOpen is what rootFS opened for a request id. Two opens with the
// same id at once (a client's bug) leave the id's files without a handle:
// the wire could not tell which reply is whose.
type pendingOpen struct {
	f       *sftpFile
	n       int // opens of this id whose reply has not gone out
	clashed bool
}

func newOpenFiles() (*openFiles, error) {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return nil, fmt.Errorf("sftp: copy-data token: %w", err)
	}
	return &openFiles{
		token:   hex.EncodeToString(b[:]),
		pending: map[uint32]*pendingOpen{},
		handles: map[string]*sftpFile{},
		copies:  map[uint32][]*copyData{},
	}, nil
}

// opened records f, opened for request id, until its HANDLE reply.
func (o *openFiles) opened(id uint32, f *sftpFile) {
	o.mu.Lock()
	defer o.mu.Unlock()
	p := o.pending[id]
	if p == nil {
		o.pending[id] = &pendingOpen{f: f, n: 1}
		return
	}
	p.n++
	p.clashed, p.f = true, nil
}

// handled gives the file opened for request id the handle of its reply.
func (o *openFiles) handled(id uint32, handle string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	p := o.pending[id]
	if p == nil {
		return // a folder's handle, or a file gone already
	}
	if p.n--; p.n <= 0 {
		delete(o.pending, id)
	}
	if p.clashed || p.f.closed {
		return
	}
	p.f.handle = handle
	o.handles[handle] = p.f
}

// byHandle returns the open file a handle names, or nil.
func (o *openFiles) byHandle(handle string) *sftpFile {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.handles[handle]
}

// closing forgets f: it is closing.
func (o *openFiles) closing(f *sftpFile) {
	o.mu.Lock()
	defer o.mu.Unlock()
	f.closed = true
	if f.handle != "" && o.handles[f.handle] == f {
		delete(o.handles, f.handle)
	}
}

// park keeps a copy-data request's fields for rootFS.
func (o *openFiles) park(id uint32, c *copyData) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.copies[id] = append(o.copies[id], c)
}

// copyPath is the path the hardlink request standing for copy-data
// request id names: a NUL, which no path can hold, and the session's
// token, so that only the wire makes one.
func (o *openFiles) copyPath(id uint32) string {
	return "/\x00copy-data-" + o.token + "/" + strconv.FormatUint(uint64(id), 10)
}

// takeCopy returns the copy-data request a hardlink request's path
// stands for, or false if the path is not one.
func (o *openFiles) takeCopy(path string) (*copyData, bool) {
	rest, ok := strings.CutPrefix(path, "/\x00copy-data-"+o.token+"/")
	if !ok {
		return nil, false
	}
	id, err := strconv.ParseUint(rest, 10, 32)
	if err != nil {
		return nil, false
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	q := o.copies[uint32(id)]
	if len(q) == 0 {
		return nil, false
	}
	c := q[0]
	if len(q) == 1 {
		delete(o.copies, uint32(id))
	} else {
		o.copies[uint32(id)] = q[1:]
	}
	return c, true
}
