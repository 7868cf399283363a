package sshserver

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"runtime/debug"
	"strings"
	"sync/atomic"
	"time"

	gliderssh "github.com/gliderlabs/ssh"
	gossh "golang.org/x/crypto/ssh"

	"github.com/darling-sshd/darling-sshd/auth"
	"github.com/darling-sshd/darling-sshd/darlingexec"
)

// session is one "session" channel. One goroutine (serve) reads the
// channel's requests in order and, once a command runs, also waits for it
// (run): an idle session is its output pumps and this one goroutine, as a
// goroutine's stack is most of what an idle session costs.
type session struct {
	s        *Server
	ch       gossh.Channel
	conn     *gossh.ServerConn
	log      *slog.Logger
	env      []string // accepted from the client
	envBytes int      // their size, bounded by maxEnvBytes

	started bool
	opts    auth.KeyOptions              // of the key the connection logged in with
	pty     *ptyRequest                  // from pty-req, before the command starts
	size    atomic.Pointer[windowChange] // the latest size, until proc exists; read by the starting command
	proc    *darlingexec.Process         // the command, once it runs
	gone    chan struct{}                // closed when the peer closed the channel or the connection died
	runDone chan struct{}                // closed when an SFTP session's goroutine has returned
}

// handleSession serves a "session" channel. It replaces gliderlabs' stock
// handler, which sends exit-status without EOF, rewrites output once a pty
// was requested and can deadlock on early window-change requests.
func (s *Server) handleSession(_ *gliderssh.Server, conn *gossh.ServerConn, nc gossh.NewChannel, ctx gliderssh.Context) {
	cs := s.connStateFor(ctx, conn)
	if n := cs.sessions.Add(1); int(n) > s.opts.MaxSessions {
		cs.sessions.Add(-1)
		s.log.Info("session refused", "reason", "too many sessions on this connection (max-sessions)",
			"remote", conn.RemoteAddr().String(), "max", s.opts.MaxSessions)
		_ = nc.Reject(gossh.ResourceShortage, "too many sessions on this connection")
		return
	}
	ch, reqs, err := nc.Accept()
	if err != nil {
		cs.sessions.Add(-1)
		s.log.Info("accept session channel", "remote", conn.RemoteAddr().String(), "err", err)
		return
	}
	se := &session{
		s:    s,
		ch:   ch,
		conn: conn,
		log:  s.log.With("user", conn.User(), "remote", conn.RemoteAddr().String()),
		gone: make(chan struct{}),
	}
	defer se.recoverPanic()
	if se.opts, err = keyOptions(conn); err != nil {
		cs.sessions.Add(-1)
		se.log.Error("session refused: the key's options are lost", "err", err)
		ch.Close()
		return
	}
	// serve gets a goroutine of its own, and this one, gliderlabs', ends:
	// under gliderlabs' frames and this function's (712 bytes), serve's
	// stack grew to 8 KiB and stayed there while idle; on its own it
	// stays at 4 KiB.
	go func() {
		defer cs.sessions.Add(-1)
		defer se.recoverPanic()
		se.serve(reqs)
	}()
}

// serve answers the channel's requests until the channel is closed. It
// never blocks on the command: x/crypto stalls the whole connection when a
// channel's request queue is full. A command it starts runs under run,
// which goes on answering requests until the command has ended.
func (se *session) serve(reqs <-chan *gossh.Request) {
	for req := range reqs {
		r, ok := se.handle(req)
		if !ok {
			continue
		}
		if !se.s.startRun() {
			// Its stderr line may wait for window; requests must not.
			go se.finishWithError("server is shutting down")
			continue
		}
		func() {
			defer se.s.runs.Done()
			se.run(r, reqs)
		}()
	}
	se.peerGone()
	if se.runDone != nil {
		<-se.runDone
	}
}

// peerGone records that the channel's requests have ended: the peer
// closed the channel or the connection died.
func (se *session) peerGone() {
	select {
	case <-se.gone:
	default:
		close(se.gone)
	}
}

// handle answers one request. For an exec or shell request, or a
// subsystem under a forced command, it replies and returns the command to
// run instead.
func (se *session) handle(req *gossh.Request) (r darlingexec.Request, run bool) {
	ok := false
	switch req.Type {
	case "env":
		ok = se.setEnv(req.Payload)
	case "pty-req":
		ok = se.setPty(req.Payload)
	case "window-change":
		ok = se.windowChange(req.Payload)
	case "exec":
		var p struct{ Command string }
		if err := gossh.Unmarshal(req.Payload, &p); err != nil || se.started {
			break
		}
		return se.start(req, darlingexec.Request{Command: p.Command}), true
	case "subsystem":
		var sub struct{ Name string }
		if err := gossh.Unmarshal(req.Payload, &sub); err != nil || se.started {
			break
		}
		if se.opts.Command != nil {
			// A forced command runs for subsystems too.
			return se.start(req, darlingexec.Request{Command: sub.Name}), true
		}
		if sub.Name != "sftp" {
			se.log.Info("subsystem refused", "name", truncate(sub.Name, 64))
			break
		}
		se.startSFTP(req)
		return r, false
	case "shell":
		if se.started {
			break
		}
		return se.start(req, darlingexec.Request{Shell: true}), true
	}
	if req.WantReply {
		_ = req.Reply(ok, nil)
	}
	return r, false
}

// start replies to the exec or shell request and returns the command to
// run: the client's, or the key's forced command.
func (se *session) start(req *gossh.Request, r darlingexec.Request) darlingexec.Request {
	se.started = true
	if req.WantReply {
		_ = req.Reply(true, nil)
	}
	r.User = se.conn.User()
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
		// start and only later listens for changes, so a change sent
		// before that would be lost.
		r.PTY.Latest = func() (cols, rows uint16, ok bool) {
			if w := se.size.Load(); w != nil {
				return clampSize(w.Cols), clampSize(w.Rows), true
			}
			return 0, 0, false
		}
	}
	return r
}

// launch runs an SFTP session in its own goroutine, counted among the
// server's running sessions; once the server is closing, the session is
// refused with exit status 255 instead and cleanup runs.
func (se *session) launch(work, cleanup func()) {
	se.runDone = make(chan struct{})
	if !se.s.startRun() {
		if cleanup != nil {
			cleanup()
		}
		go func() {
			defer close(se.runDone)
			se.finishWithError("server is shutting down")
		}()
		return
	}
	go func() {
		defer se.s.runs.Done()
		defer close(se.runDone)
		defer se.recoverPanic()
		if cleanup != nil {
			defer cleanup()
		}
		work()
	}()
}

// setPty handles "pty-req": the command will run on a terminal.
func (se *session) setPty(payload []byte) bool {
	if se.opts.NoPty {
		se.log.Info("pty request refused", "reason", "no-pty or restrict on the key's line")
		return false
	}
	if se.started || se.pty != nil {
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
	if se.proc != nil {
		return se.proc.Resize(clampSize(w.Cols), clampSize(w.Rows)) == nil
	}
	se.size.Store(&w)
	return true
}

// connEnv is what the server itself tells the command about the connection.
func (se *session) connEnv() []string {
	rh, rp, _ := net.SplitHostPort(se.conn.RemoteAddr().String())
	lh, lp, _ := net.SplitHostPort(se.conn.LocalAddr().String())
	return []string{
		"SSH_CONNECTION=" + rh + " " + rp + " " + lh + " " + lp,
		"SSH_CLIENT=" + rh + " " + rp + " " + lp,
	}
}

// run starts the command and pumps its stdio until it has exited and its
// output is drained, then sends the exit frames in OpenSSH sshd's order:
// all data, exit-status (or exit-signal), EOF, close. It answers the
// channel's requests all along, and returns with them possibly still open.
func (se *session) run(r darlingexec.Request, reqs <-chan *gossh.Request) {
	// The command may wait for an exec slot or for the prefix to warm,
	// and requests must not.
	startc := make(chan started, 1)
	defer func() {
		if startc != nil {
			// serve's goroutine panicked: whatever starts is ended.
			go func() { (<-startc).release(se.s.execSlots) }()
		}
	}()
	se.await(&reqs, func() {
		st := started{err: errors.New("internal error")}
		defer func() { startc <- st }()
		st = se.startCommand(r)
	})
	st := <-startc
	startc = nil
	if st.slot {
		defer func() { <-se.s.execSlots }()
	}
	switch {
	case st.err != nil:
		msg := st.err.Error()
		if errors.Is(st.err, context.Canceled) {
			se.log.Info("session not started: server is shutting down")
			msg = "server is shutting down"
		} else {
			se.log.Error("session not started", "err", st.err)
		}
		se.await(&reqs, func() { se.finishWithError(msg) })
	case st.p != nil:
		se.supervise(st.p, r, reqs)
	}
}

// started is what startCommand hands back to run.
type started struct {
	p    *darlingexec.Process // nil when the peer went away in the queue
	err  error
	slot bool // p holds one of the server's exec slots
}

// release ends a command nobody will supervise and frees its slot.
func (st started) release(slots chan struct{}) {
	if st.p != nil {
		st.p.End(context.Background())
	}
	if st.slot {
		<-slots
	}
}

// startCommand takes an exec slot when the server limits them, then starts
// the command. The slot goes back unless a process holds it, even if
// Start panics.
func (se *session) startCommand(r darlingexec.Request) (st started) {
	slots := se.s.execSlots
	if slots == nil || r.Shell {
		p, err := se.s.launcher.Start(se.s.ctx, r)
		return started{p: p, err: err}
	}
	select {
	case slots <- struct{}{}:
	default:
		se.log.Info("exec session queued", "max_exec", cap(slots))
		select {
		case slots <- struct{}{}:
		case <-se.gone:
			return started{}
		case <-se.s.ctx.Done():
			return started{err: se.s.ctx.Err()}
		}
	}
	defer func() {
		if !st.slot {
			<-slots
		}
	}()
	p, err := se.s.launcher.Start(se.s.ctx, r)
	if err != nil {
		return started{err: err}
	}
	return started{p: p, slot: true}
}

// await runs f, which may take long (the kill grace; a write waiting for
// window), in its own goroutine and answers the channel's requests until
// it returns: x/crypto stalls the whole connection when a channel's
// request queue is full. *reqs becomes nil if the requests end.
func (se *session) await(reqs *<-chan *gossh.Request, f func()) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer se.recoverPanic()
		f()
	}()
	for {
		select {
		case <-done:
			return
		case req, ok := <-*reqs:
			if !ok {
				*reqs = nil
				se.peerGone()
				continue
			}
			se.handle(req)
		}
	}
}

// supervise pumps the running command's stdio, answers requests, and ends
// the session's processes when the peer goes away or the server shuts down.
func (se *session) supervise(p *darlingexec.Process, r darlingexec.Request, reqs <-chan *gossh.Request) {
	log := se.log.With("pid", p.Pid())
	se.proc = p
	if w := se.size.Load(); w != nil {
		// A size sent while the command started; the same size again
		// changes nothing.
		p.Resize(clampSize(w.Cols), clampSize(w.Rows))
	}
	if r.Shell {
		log.Info("shell started")
	} else {
		log.Info("exec started", "command", truncate(r.Command, 200))
	}

	go func() {
		defer se.recoverPanic()
		// The client's EOF is the command's EOF. Many clients never
		// half-close, so nothing waits on this copier.
		_, _ = p.Stdin.ReadFrom(se.ch)
		p.Stdin.Close()
	}()
	// outDone is closed by whichever output pump ends last.
	outDone := make(chan struct{})
	var pumps atomic.Int32
	pumps.Store(2)
	for _, o := range []struct {
		dst io.Writer
		src *darlingexec.Output
	}{{se.ch, p.Stdout}, {se.ch.Stderr(), p.Stderr}} {
		go func() {
			defer se.recoverPanic()
			pump(o.dst, o.src)
			if pumps.Add(-1) == 0 {
				close(outDone)
			}
		}()
	}

	// reqs is nil once the peer has gone.
	exited, drained, serverEnded := false, false, false
	shutdown := se.s.ctx.Done()
	// Each event source is set to nil once it has fired: a closed channel
	// is always ready, and would spin this loop.
	done, drainedc := p.Done(), (<-chan struct{})(outDone)
	var drainTimeout <-chan time.Time
	// endProcesses ends the session's processes, then gives their output
	// drain to arrive before it stops reading it: a process outside the
	// session could hold it open for ever.
	endProcesses := func(drain time.Duration) {
		se.await(&reqs, func() { p.End(context.Background()) })
		switch {
		case drained:
		case drain == 0:
			p.CloseOutput()
		default:
			drainTimeout = time.After(drain)
		}
	}
	if reqs == nil {
		log.Info("client went away while the command started; ending session processes")
		endProcesses(0)
	}
	for !(exited && drained) {
		select {
		case req, ok := <-reqs:
			if ok {
				se.handle(req)
				break
			}
			reqs = nil
			se.peerGone()
			log.Info("client went away; ending session processes")
			endProcesses(0)
		case <-done:
			done, exited = nil, true
			if st, _ := p.Wait(); st.Signal != "" && !st.Ended {
				// The launcher itself was killed: Darling then SIGKILLs
				// only the command's direct child, and the rest of the
				// session is orphaned, possibly holding the output open.
				log.Warn("launcher died of a signal; ending session processes", "signal", st.Signal)
				endProcesses(drainGrace)
			}
		case <-drainedc:
			drainedc, drained = nil, true
		case <-drainTimeout:
			drainTimeout = nil
			p.CloseOutput()
		case <-shutdown:
			shutdown, serverEnded = nil, true
			log.Info("server shutting down; ending session")
			endProcesses(drainGrace)
		}
	}
	p.CloseOutput()
	st, werr := p.Wait()
	switch {
	case reqs == nil:
	case serverEnded:
		se.await(&reqs, func() { se.finishWithError("server is shutting down") })
	case werr != nil:
		log.Error("wait for launcher", "err", werr)
		se.await(&reqs, func() { se.finishWithError("lost the command: " + werr.Error()) })
	case st.Signal != "" && !st.Ended:
		log.Info("session ended", "signal", st.Signal)
		se.sendExitSignal(st)
		se.closeChannel()
	default:
		log.Info("session ended", "status", st.Code)
		if st.Code != 0 && !se.s.launcher.ContainerRunning() {
			log.Warn("the prefix's container is gone; the next session warms it again", "prefix", se.s.opts.Prefix)
		}
		se.sendExitStatus(uint32(st.Code))
		se.closeChannel()
	}
	// A daemon the command left behind belongs to the session too.
	se.await(&reqs, func() { p.Sweep(context.Background()) })
}

// drainGrace is how long a session the server ends still forwards what
// its processes wrote before they ended.
const drainGrace = time.Second

// recoverPanic ends the connection of a goroutine that panicked, logged
// with its stack, and keeps the server running.
func (se *session) recoverPanic() {
	if r := recover(); r != nil {
		se.log.Error("session panic", "panic", r, "stack", string(debug.Stack()))
		se.conn.Close()
	}
}

// pump copies a command's output to the channel. If the channel refuses
// writes (the client went away), it keeps draining so the command never
// blocks on a full pipe before it is ended.
func pump(dst io.Writer, src *darlingexec.Output) {
	if _, err := src.WriteTo(dst); err != nil {
		_, _ = src.WriteTo(io.Discard)
	}
}

// finishWithError ends a session the server could not run or had to end:
// one line on stderr, exit status 255, EOF, close.
func (se *session) finishWithError(msg string) {
	fmt.Fprintf(se.ch.Stderr(), "darling-sshd: %s\n", msg)
	se.sendExitStatus(255)
	se.closeChannel()
}

func (se *session) sendExitStatus(code uint32) {
	_, _ = se.ch.SendRequest("exit-status", false, gossh.Marshal(struct{ Status uint32 }{code}))
}

func (se *session) sendExitSignal(st darlingexec.ExitStatus) {
	_, _ = se.ch.SendRequest("exit-signal", false, gossh.Marshal(struct {
		Signal     string
		CoreDumped bool
		Error      string
		Lang       string
	}{st.Signal, st.CoreDumped, "", ""}))
}

// closeChannel sends EOF, then close.
func (se *session) closeChannel() {
	_ = se.ch.CloseWrite()
	_ = se.ch.Close()
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
