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
	"sync"
	"sync/atomic"
	"time"

	gliderssh "github.com/gliderlabs/ssh"
	gossh "golang.org/x/crypto/ssh"

	"github.com/darling-sshd/darling-sshd/auth"
	"github.com/darling-sshd/darling-sshd/darlingexec"
)

// session is one "session" channel. A single goroutine (serve) reads the
// channel's requests in order; the command, once started, runs in another
// (run), which owns the output pumps and the exit frames.
type session struct {
	s        *Server
	ch       gossh.Channel
	conn     *gossh.ServerConn
	log      *slog.Logger
	env      []string // accepted from the client
	envBytes int      // their size, bounded by maxEnvBytes

	started bool
	opts    auth.KeyOptions // of the key the connection logged in with
	pty     *ptyRequest     // from pty-req, before the command starts
	gone    chan struct{}   // closed when the peer closed the channel or the connection died

	// mu guards proc and size: window-change comes on serve's goroutine,
	// the process on run's.
	mu      sync.Mutex
	proc    *darlingexec.Process
	size    *windowChange // the latest size, until proc exists
	runDone chan struct{} // closed when run has returned
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
	defer cs.sessions.Add(-1)
	ch, reqs, err := nc.Accept()
	if err != nil {
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
		se.log.Error("session refused: the key's options are lost", "err", err)
		ch.Close()
		return
	}
	se.serve(reqs)
}

// serve answers the channel's requests until the channel is closed. It
// never blocks on the command: x/crypto stalls the whole connection when a
// channel's request queue is full.
func (se *session) serve(reqs <-chan *gossh.Request) {
	for req := range reqs {
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
			ok = true
			se.start(req, darlingexec.Request{Command: p.Command})
			continue
		case "subsystem":
			var sub struct{ Name string }
			if err := gossh.Unmarshal(req.Payload, &sub); err != nil || se.started {
				break
			}
			if se.opts.Command != nil {
				// A forced command runs for subsystems too.
				ok = true
				se.start(req, darlingexec.Request{Command: sub.Name})
				continue
			}
			if sub.Name != "sftp" {
				se.log.Info("subsystem refused", "name", truncate(sub.Name, 64))
				break
			}
			se.startSFTP(req)
			continue
		case "shell":
			if se.started {
				break
			}
			ok = true
			se.start(req, darlingexec.Request{Shell: true})
			continue
		}
		if req.WantReply {
			_ = req.Reply(ok, nil)
		}
	}
	close(se.gone)
	if se.runDone != nil {
		<-se.runDone
	}
}

// start replies to the exec or shell request and runs the command.
func (se *session) start(req *gossh.Request, r darlingexec.Request) {
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
	}
	se.launch(func() { se.run(r) }, nil)
}

// launch runs work in its own goroutine, counted among the server's
// running sessions; once the server is closing, the session is refused
// with exit status 255 instead and cleanup runs.
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
	return true
}

// windowChange resizes the terminal, or remembers the size for when the
// command starts. It never blocks.
func (se *session) windowChange(payload []byte) bool {
	var w windowChange
	if err := gossh.Unmarshal(payload, &w); err != nil {
		return false
	}
	se.mu.Lock()
	defer se.mu.Unlock()
	if se.proc != nil {
		return se.proc.Resize(clampSize(w.Cols), clampSize(w.Rows)) == nil
	}
	se.size = &w
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
// all data, exit-status (or exit-signal), EOF, close.
func (se *session) run(r darlingexec.Request) {
	log := se.log
	if slots := se.s.execSlots; slots != nil && !r.Shell {
		select {
		case slots <- struct{}{}:
		default:
			log.Info("exec session queued", "max_exec", cap(slots))
			select {
			case slots <- struct{}{}:
			case <-se.gone:
				return
			case <-se.s.ctx.Done():
				se.finishWithError("server is shutting down")
				return
			}
		}
		defer func() { <-slots }()
	}
	p, err := se.s.launcher.Start(se.s.ctx, r)
	if err != nil {
		log.Error("session not started", "err", err)
		msg := err.Error()
		if errors.Is(err, context.Canceled) {
			msg = "server is shutting down"
		}
		se.finishWithError(msg)
		return
	}
	log = log.With("pid", p.Pid())
	se.mu.Lock()
	se.proc = p
	if se.size != nil {
		p.Resize(clampSize(se.size.Cols), clampSize(se.size.Rows))
	}
	se.mu.Unlock()
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

	exited, drained, serverEnded, peerGone := false, false, false, false
	gone, shutdown := se.gone, se.s.ctx.Done()
	var drainTimeout <-chan time.Time
	// endProcesses ends the session's processes, then gives their output
	// drain to arrive before it stops reading it: a process outside the
	// session could hold it open for ever.
	endProcesses := func(drain time.Duration) {
		p.End(context.Background())
		switch {
		case drained:
		case drain == 0:
			p.CloseOutput()
		default:
			drainTimeout = time.After(drain)
		}
	}
	for !(exited && drained) {
		select {
		case <-p.Done():
			exited = true
			if st, _ := p.Wait(); st.Signal != "" && !st.Ended {
				// The launcher itself was killed: Darling then SIGKILLs
				// only the command's direct child, and the rest of the
				// session is orphaned, possibly holding the output open.
				log.Warn("launcher died of a signal; ending session processes", "signal", st.Signal)
				endProcesses(drainGrace)
			}
		case <-outDone:
			drained = true
		case <-drainTimeout:
			drainTimeout = nil
			p.CloseOutput()
		case <-gone:
			gone, peerGone = nil, true
			log.Info("client went away; ending session processes")
			endProcesses(0)
		case <-shutdown:
			shutdown, serverEnded = nil, true
			log.Info("server shutting down; ending session")
			endProcesses(drainGrace)
		}
	}
	p.CloseOutput()
	st, werr := p.Wait()
	switch {
	case peerGone:
	case serverEnded:
		se.finishWithError("server is shutting down")
	case werr != nil:
		log.Error("wait for launcher", "err", werr)
		se.finishWithError("lost the command: " + werr.Error())
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
	p.Sweep(context.Background())
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
