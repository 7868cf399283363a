package sshserver

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"time"

	gossh "golang.org/x/crypto/ssh"

	"github.com/darling-sshd/darling-sshd/darlingexec"
)

// handle answers one channel request. It never blocks: x/crypto stalls the
// whole connection when a channel's request queue is full.
func (se *session) handle(req *gossh.Request) {
	ok := false
	switch req.Type {
	case "env":
		ok = se.setEnv(req.Payload)
	case "pty-req":
		ok = se.setPty(req.Payload)
	case "window-change":
		ok = se.windowChange(req.Payload)
	case "signal":
		ok = se.signal(req.Payload)
	case "exec":
		var p struct{ Command string }
		if gossh.Unmarshal(req.Payload, &p) == nil && se.phase == requested {
			se.startCommand(req, darlingexec.Request{Command: p.Command})
			return
		}
	case "shell":
		if se.phase == requested {
			se.startCommand(req, darlingexec.Request{Shell: true})
			return
		}
	case "subsystem":
		var sub struct{ Name string }
		if gossh.Unmarshal(req.Payload, &sub) != nil || se.phase != requested {
			break
		}
		switch {
		case se.opts.Command != nil:
			// A forced command runs for subsystems too.
			se.startCommand(req, darlingexec.Request{Command: sub.Name})
			return
		case sub.Name == "sftp":
			se.startSFTP(req)
			return
		}
		se.log.Info("subsystem refused", "name", truncate(sub.Name, 64))
	}
	reply(req, ok)
}

func reply(req *gossh.Request, ok bool) {
	if req.WantReply {
		_ = req.Reply(ok, nil)
	}
}

// register counts the session among the server's running ones, which
// shutdown waits for; false once the server is closing.
func (se *session) register() bool {
	if !se.s.startRun() {
		return false
	}
	se.registered = true
	se.shutdown = se.s.ctx.Done()
	return true
}

// startCommand accepts an exec or shell request and starts the command in
// a task: it may wait for an exec slot or for the prefix to warm.
func (se *session) startCommand(req *gossh.Request, r darlingexec.Request) {
	se.enter(starting)
	reply(req, true)
	if !se.register() {
		se.finish("server is shutting down", nil)
		return
	}
	r = se.request(r)
	se.kind, se.command = whatRuns(r)
	se.spawn(func() func() {
		res := se.launch(r)
		se.pending.Store(&res)
		return func() { se.launched(r, se.pending.Swap(nil)) }
	})
}

// launch is what the start task hands back.
type launch struct {
	cmd  Command // nil when the peer went away in the queue
	slot bool    // cmd holds one of the server's exec slots
	err  error
}

// request builds what runs: the client's command or the key's forced
// command, with the session's environment and terminal.
func (se *session) request(r darlingexec.Request) darlingexec.Request {
	r.User = se.sc.User()
	r.Env = append(se.connEnv(), se.env...)
	for _, kv := range se.opts.Environment {
		// environment= of the key line, except what the server sets.
		if name, _, _ := strings.Cut(kv, "="); !matchAny(deniedEnv(), name) {
			r.Env = append(r.Env, kv)
		}
	}
	if forced := se.opts.Command; forced != nil {
		if !r.Shell || r.Command != "" {
			r.Env = append(r.Env, "SSH_ORIGINAL_COMMAND="+r.Command)
		}
		r = darlingexec.Request{Command: *forced, User: r.User, Env: r.Env}
	}
	if se.pty != nil {
		r.PTY = se.pty.pty()
		// The terminal starts with the latest size the client sent, read
		// as late as possible: Darling's launcher copies the size once at
		// start and only later listens for changes.
		r.PTY.Latest = func() (cols, rows uint16, ok bool) {
			if w := se.size.Load(); w != nil {
				return clampSize(w.Cols), clampSize(w.Rows), true
			}
			return 0, 0, false
		}
	}
	return r
}

// launch takes an exec slot when the server limits them, then starts the
// command. It runs as the session's task: it reads nothing the loop owns.
func (se *session) launch(r darlingexec.Request) launch {
	slots := se.s.execSlots
	if slots == nil || r.Shell {
		cmd, err := se.s.launcher.Start(se.s.ctx, r)
		return launch{cmd: cmd, err: err}
	}
	select {
	case slots <- struct{}{}:
	default:
		se.log.Info("exec session queued", "max_exec", cap(slots))
		select {
		case slots <- struct{}{}:
		case <-se.gone:
			return launch{}
		case <-se.s.ctx.Done():
			return launch{err: se.s.ctx.Err()}
		}
	}
	res := launch{slot: true}
	defer func() {
		if res.cmd == nil {
			<-slots // even if Start panicked
		}
	}()
	res.cmd, res.err = se.s.launcher.Start(se.s.ctx, r)
	if res.err != nil {
		res.slot = false
	}
	return res
}

// launched takes the started command into the session: its output is
// pumped to the channel until it ends.
func (se *session) launched(r darlingexec.Request, res *launch) {
	se.slot = res.slot
	switch {
	case res.err != nil:
		msg := res.err.Error()
		if errors.Is(res.err, context.Canceled) {
			se.log.Info("session not started: server is shutting down")
			msg = "server is shutting down"
		} else {
			se.log.Error("session not started", "err", res.err)
		}
		se.finish(msg, nil)
		return
	case res.cmd == nil:
		se.enter(closed)
		return
	}
	se.cmd = res.cmd
	se.enter(running)
	if w := se.size.Load(); w != nil {
		// A size sent while the command started; the same size again
		// changes nothing.
		_ = se.cmd.Resize(clampSize(w.Cols), clampSize(w.Rows))
	}
	if r.Shell {
		se.log.Info("shell started", "pid", se.cmd.Pid())
	} else {
		se.log.Info("exec started", "pid", se.cmd.Pid(), "command", truncate(r.Command, 200))
	}
	se.startPumps()
	se.done = se.cmd.Done()
	switch {
	case se.peerGone:
		se.log.Info("client went away while the command started; ending session processes", "pid", se.cmd.Pid())
		se.end(0)
	case se.serverEnded:
		se.end(drainGrace)
	}
}

// startPumps copies the channel to the command's stdin and its output to
// the channel. The client's EOF is the command's EOF; many clients never
// half-close, so nothing waits on the stdin copier.
func (se *session) startPumps() {
	stdin, stdout, stderr := se.cmd.Stdio()
	se.start = time.Now()
	se.goSafe(func() {
		var in io.Reader = counting{se.ch, &se.bytesIn}
		if ps, ok := se.ch.(darlingexec.PeekSource); ok {
			in = countingPeek{counting{se.ch, &se.bytesIn}, ps}
		}
		_, _ = io.Copy(stdin, in)
		stdin.Close()
	})
	drained := make(chan struct{})
	var left atomic.Int32
	left.Store(2)
	for _, o := range [...]struct {
		dst io.Writer
		src io.WriterTo
	}{{counting{se.ch, &se.bytesOut}, stdout}, {counting{se.ch.Stderr(), &se.bytesOut}, stderr}} {
		se.goSafe(func() {
			pump(o.dst, o.src)
			if left.Add(-1) == 0 {
				close(drained)
			}
		})
	}
	se.drained = drained
}

// counting counts the bytes read from or written to a stream.
type counting struct {
	rw interface {
		io.Reader
		io.Writer
	}
	n *atomic.Int64
}

func (c counting) Read(p []byte) (int, error) {
	n, err := c.rw.Read(p)
	c.n.Add(int64(n))
	return n, err
}

func (c counting) Write(p []byte) (int, error) {
	n, err := c.rw.Write(p)
	c.n.Add(int64(n))
	return n, err
}

// countingPeek is counting for a channel that lends its data without a
// copy (darlingexec.PeekSource): what is consumed counts.
type countingPeek struct {
	counting
	ps darlingexec.PeekSource
}

func (c countingPeek) PeekData(bufs [][]byte, max int) ([][]byte, error) {
	return c.ps.PeekData(bufs, max)
}

func (c countingPeek) DiscardData(n int) error {
	c.n.Add(int64(n))
	return c.ps.DiscardData(n)
}

// setPty handles "pty-req": the command will run on a terminal.
func (se *session) setPty(payload []byte) bool {
	if se.opts.NoPty {
		se.log.Info("pty request refused", "reason", "no-pty or restrict on the key's line")
		return false
	}
	if se.phase != requested || se.pty != nil {
		return false
	}
	r, err := parsePtyReq(payload)
	if err != nil {
		se.log.Info("pty request refused", "err", err)
		return false
	}
	se.pty = r
	se.size.Store(nil) // a window-change before pty-req is not the terminal's size
	return true
}

// windowChange resizes the terminal, or remembers the size for when the
// command starts. It never blocks.
func (se *session) windowChange(payload []byte) bool {
	var w windowChange
	if err := gossh.Unmarshal(payload, &w); err != nil {
		return false
	}
	se.size.Store(&w)
	if se.cmd != nil {
		return se.cmd.Resize(clampSize(w.Cols), clampSize(w.Rows)) == nil
	}
	return true
}

// signal delivers a "signal" request to the running command.
func (se *session) signal(payload []byte) bool {
	var sig struct{ Name string }
	if err := gossh.Unmarshal(payload, &sig); err != nil || se.cmd == nil || se.phase != running {
		return false
	}
	if err := se.cmd.Signal(sig.Name); err != nil {
		se.log.Info("signal request refused", "signal", truncate(sig.Name, 32), "err", err)
		return false
	}
	return true
}

// connEnv is what the server itself tells the command about the connection.
func (se *session) connEnv() []string {
	rh, rp, _ := net.SplitHostPort(se.sc.RemoteAddr().String())
	lh, lp, _ := net.SplitHostPort(se.sc.LocalAddr().String())
	return []string{
		"SSH_CONNECTION=" + rh + " " + rp + " " + lh + " " + lp,
		"SSH_CLIENT=" + rh + " " + rp + " " + lp,
	}
}
