package sshserver

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"runtime/debug"
	"strconv"
	"sync/atomic"
	"time"

	gliderssh "github.com/gliderlabs/ssh"
	gossh "golang.org/x/crypto/ssh"

	"github.com/darling-sshd/darling-sshd/auth"
	"github.com/darling-sshd/darling-sshd/darlingexec"
)

// phase is where a session is in its life. Each moves only forward:
//
//	requested → starting → running → exited → closing → closed
//
// A session that is refused or fails to start goes from starting to
// closing; one whose client leaves first skips what it no longer needs.
type phase int

const (
	requested phase = iota // taking env, pty-req, window-change; waiting for exec, shell or subsystem
	starting               // the command or SFTP is being started, off the request loop
	running                // the command runs; its output is pumped to the channel
	exited                 // the launcher has exited; its output is draining
	closing                // the exit frames are going out and leftovers are swept
	closed                 // nothing left but to read the requests until the peer's close
)

var phaseNames = [...]string{"requested", "starting", "running", "exited", "closing", "closed"}

func (p phase) String() string { return phaseNames[p] }

// session is one "session" channel. Its run loop owns all of its state:
// every event reaches it on a channel, which is set to nil once it has
// fired or closed (a closed channel is always ready and would spin the
// loop). Besides the loop, a session runs the copy goroutines, the
// command's own waiter, and at most one task at a time for what may block:
// starting the command, ending its processes, a write that waits for
// window.
type session struct {
	s    *Server
	c    *conn
	ch   gossh.Channel
	sc   *gossh.ServerConn
	log  *slog.Logger
	opts auth.KeyOptions // of the key the connection logged in with

	phase phase
	// Set by requests before the command starts.
	env      []string
	envBytes int
	pty      *ptyRequest
	size     atomic.Pointer[windowChange] // the latest size; read by the starting command

	// Events; each nil once it fired, or while it cannot fire.
	reqs       <-chan *gossh.Request
	done       <-chan struct{}  // the command's launcher exited
	drained    <-chan struct{}  // both output streams reached their end
	drainTimer <-chan time.Time // stop waiting for output
	shutdown   <-chan struct{}  // the server is ending sessions
	sftpDone   <-chan struct{}  // the SFTP server returned
	taskDone   chan func()      // the task finished; run what it returns
	panicked   chan any         // another goroutine of the session panicked

	// What the session holds.
	cmd        Command                // once started
	pending    atomic.Pointer[launch] // the start task's result, until the loop takes it
	task       bool                   // a task is running
	slot       bool                   // an exec slot
	registered bool                   // a place among the server's running sessions
	sftp       bool                   // SFTP is served in-process, not a command
	sftpErr    error                  // why the SFTP server returned; read after sftpDone
	gone       chan struct{}          // closed when the requests end, for the start task

	// What the status shows: its entry in the server's registry once it
	// runs, and what it runs (exec or shell, and the command).
	live          *liveSession
	kind, command string

	// What it moved: the client's stdin; stdout and stderr.
	start             time.Time
	bytesIn, bytesOut atomic.Int64

	// How it is ending.
	peerGone    bool // the client closed the channel or left
	serverEnded bool // the server is shutting down
	ending      bool // End was called; drainAfter applies once it returned
	endReturned bool
	drainAfter  time.Duration
}

// handleSession serves a "session" channel. It replaces gliderlabs' stock
// handler, which sends exit-status without EOF, rewrites output once a pty
// was requested and can deadlock on early window-change requests.
func (s *Server) handleSession(_ *gliderssh.Server, sc *gossh.ServerConn, nc gossh.NewChannel, ctx gliderssh.Context) {
	// gliderlabs runs this on a goroutine of its own: a panic before the
	// session's loop takes over ends the connection.
	defer contain(s.log.With("remote", sc.RemoteAddr().String(), "user", sc.User()), "session channel handler", func() { sc.Close() })
	s.at("channel", sc.RemoteAddr().String())
	c := connOf(ctx)
	opts, ok := c.options()
	if !ok {
		s.log.Error("session refused: the connection has no logged-in key", "remote", sc.RemoteAddr().String())
		_ = nc.Reject(gossh.Prohibited, "not logged in")
		return
	}
	if n := c.sessions.Add(1); int(n) > s.opts.MaxSessions {
		c.sessions.Add(-1)
		s.reg.refused(refusalMaxSessions)
		s.log.Info("session refused", "reason", "too many sessions on this connection (max-sessions)",
			"remote", c.remote, "max", s.opts.MaxSessions)
		_ = nc.Reject(gossh.ResourceShortage, "too many sessions on this connection")
		return
	}
	ch, reqs, err := nc.Accept()
	if err != nil {
		c.sessions.Add(-1)
		s.log.Info("accept session channel", "remote", c.remote, "err", err)
		return
	}
	c.startKeepalive(sc)
	se := &session{
		s: s, c: c, ch: ch, sc: sc, opts: opts, reqs: reqs,
		log:      s.log.With("user", sc.User(), "remote", c.remote),
		taskDone: make(chan func(), 1),
		panicked: make(chan any, 4),
		gone:     make(chan struct{}),
	}
	// The loop gets a goroutine of its own, and gliderlabs' ends: under
	// gliderlabs' frames and this function's, an idle session's stack
	// would grow to twice the size and stay there.
	go func() {
		defer c.sessions.Add(-1)
		se.run()
	}()
}

// run is the session's loop: it takes one event at a time until the
// session is closed and the peer has closed the channel.
func (se *session) run() {
	defer se.cleanup()
	for se.phase != closed || se.reqs != nil || se.task || se.sftpDone != nil {
		select {
		case req, ok := <-se.reqs:
			if !ok {
				se.reqsEnded()
				break
			}
			se.handle(req)
		case then := <-se.taskDone:
			se.task = false
			then()
		case <-se.done:
			se.done = nil
			se.exited()
		case <-se.drained:
			se.drained = nil
			se.maybeClose()
		case <-se.drainTimer:
			se.drainTimer = nil
			se.cmd.CloseOutput()
		case <-se.shutdown:
			se.shutdown = nil
			se.serverEnding()
		case <-se.sftpDone:
			se.sftpDone = nil
			se.sftpEnded()
		case v := <-se.panicked:
			panic(v) // cleanup recovers it, in the loop that owns the state
		}
	}
}

// enter moves the session to phase p.
func (se *session) enter(p phase) {
	if p < se.phase {
		panic(fmt.Sprintf("session phase %s after %s", p, se.phase))
	}
	se.log.Debug("session phase", "from", se.phase, "to", p)
	se.phase = p
	if p == running {
		se.live = se.s.reg.add(se.statusInfo(), &se.bytesIn, &se.bytesOut)
	}
}

// spawn runs f as the session's task, off the loop, and then the function
// f returns on the loop. Only one task runs at a time.
func (se *session) spawn(f func() (then func())) {
	if se.task {
		panic("session task already running")
	}
	se.task = true
	go func() {
		then := func() {}
		defer func() { se.taskDone <- then }()
		defer se.catch()
		if t := f(); t != nil {
			then = t
		}
	}()
}

// catch hands a panic of a goroutine other than the loop to the loop,
// with the stack where it happened. Deferred, it is what recovers.
func (se *session) catch() {
	if v := recover(); v != nil {
		se.panicked <- panicValue{v, debug.Stack()}
	}
}

// panicValue is a panic of another goroutine, with its stack.
type panicValue struct {
	v     any
	stack []byte
}

// goSafe runs f in a goroutine whose panic is the session's.
func (se *session) goSafe(f func()) {
	go func() {
		defer se.catch()
		f()
	}()
}

// reqsEnded records that the client closed the channel or the connection
// died: the session's processes are ended, nothing more is sent.
func (se *session) reqsEnded() {
	se.reqs = nil
	se.peerGone = true
	close(se.gone)
	switch se.phase {
	case requested:
		se.enter(closed)
	case running, exited:
		if se.sftp {
			return // the channel's close ends the SFTP server
		}
		se.log.Info("client went away; ending session processes", "pid", se.cmd.Pid())
		se.end(0)
	}
}

// end ends the session's processes in a task; then, unless the output has
// drained, it is read for drain more before it is closed: a process
// outside the session could hold it open for ever.
func (se *session) end(drain time.Duration) {
	if se.ending {
		se.drainAfter = min(se.drainAfter, drain)
		if se.endReturned && drain == 0 {
			se.cmd.CloseOutput()
		}
		return
	}
	se.ending, se.drainAfter = true, drain
	cmd := se.cmd
	se.spawn(func() func() {
		cmd.End(context.Background())
		return func() {
			se.endReturned = true
			switch {
			case se.drained == nil:
			case se.drainAfter == 0:
				cmd.CloseOutput()
			default:
				se.drainTimer = time.After(se.drainAfter)
			}
			se.maybeClose()
		}
	})
}

// exited handles the launcher's exit. A launcher killed by a signal (not
// by us) leaves the session orphaned: Darling then SIGKILLs only the
// command's direct child, and the rest may hold the output open.
func (se *session) exited() {
	se.enter(exited)
	if st, _ := se.cmd.Wait(); st.Signal != "" && !st.Ended {
		se.log.Warn("launcher died of a signal; ending session processes", "pid", se.cmd.Pid(), "signal", st.Signal)
		se.end(drainGrace)
	}
	se.maybeClose()
}

// serverEnding ends a session the server is shutting down.
func (se *session) serverEnding() {
	se.serverEnded = true
	switch {
	case se.sftpDone != nil:
		// The channel's close ends the SFTP server.
		se.finish("server is shutting down", func() {})
	case se.phase == running || se.phase == exited:
		se.log.Info("server shutting down; ending session", "pid", se.cmd.Pid())
		se.end(drainGrace)
	}
}

// maybeClose sends the exit frames once the launcher has exited, its
// output has drained and no task runs.
func (se *session) maybeClose() {
	if se.phase != exited || se.drained != nil || se.task {
		return
	}
	se.enter(closing)
	se.cmd.CloseOutput()
	st, err := se.cmd.Wait()
	switch {
	case se.peerGone:
		se.sweep("client gone", false)
	case se.serverEnded:
		se.finish("server is shutting down", func() { se.sweep("server shut down", false) })
	case err != nil:
		se.log.Error("wait for launcher", "err", err)
		se.finish("lost the command: "+err.Error(), func() { se.sweep("launcher lost", false) })
	case st.Signal != "" && !st.Ended:
		se.sendExitSignal(st)
		se.closeChannel()
		se.sweep("signal "+st.Signal, false)
	default:
		se.sendExitStatus(uint32(st.Code))
		se.closeChannel()
		se.sweep("status "+strconv.Itoa(st.Code), st.Code != 0)
	}
}

// sweep ends what the command left behind (a daemon belongs to the
// session too), logs how the session ended and what it used, then the
// session is closed. After a failure the server looks whether the
// container is gone (noticeContainerLoss).
func (se *session) sweep(outcome string, failed bool) {
	cmd, live := se.cmd, se.live
	se.spawn(func() func() {
		cmd.Sweep(context.Background())
		if failed {
			se.s.noticeContainerLoss()
		}
		attrs := []any{"pid", cmd.Pid(), "outcome", outcome, "duration", time.Since(se.start).Round(time.Millisecond),
			"bytes_in", se.bytesIn.Load(), "bytes_out", se.bytesOut.Load()}
		u := cmd.Usage()
		if u.CPU > 0 {
			attrs = append(attrs, "cpu", u.CPU.Round(time.Millisecond))
		}
		if u.MemoryPeak > 0 {
			attrs = append(attrs, "memory_peak", u.MemoryPeak)
		}
		se.log.Info("session ended", attrs...)
		se.s.reg.end(live, outcome)
		return func() { se.enter(closed) }
	})
}

// finish ends a session the server could not run or had to end: one line
// on stderr, exit status 255, EOF, close; then it runs then, or closes.
// The line may wait for window, so it is written by a task.
func (se *session) finish(msg string, then func()) {
	if then == nil {
		then = func() { se.enter(closed) }
	}
	if se.peerGone {
		then()
		return
	}
	se.spawn(func() func() {
		fmt.Fprintf(se.ch.Stderr(), "darling-sshd: %s\n", msg)
		se.sendExitStatus(255)
		se.closeChannel()
		return then
	})
}

// cleanup runs when the loop returns, or panics: a panic ends the
// session's processes and closes its connection only. Either way, the
// exec slot and the server's count of running sessions are given back.
func (se *session) cleanup() {
	v := recover()
	if v != nil {
		stack := debug.Stack()
		if pv, ok := v.(panicValue); ok {
			v, stack = pv.v, pv.stack
		}
		se.log.Error("session panic", "panic", v, "stack", string(stack))
		se.sc.Close()
		if se.task {
			// The task's result is lost with the loop; wait for it so
			// that what it started is ended below.
			<-se.taskDone
			if res := se.pending.Swap(nil); res != nil {
				se.cmd, se.slot = res.cmd, res.slot
			}
		}
		if se.cmd != nil {
			se.cmd.End(context.Background())
			se.cmd.CloseOutput()
		}
		if se.sftpDone != nil {
			<-se.sftpDone
		}
	}
	se.s.reg.end(se.live, se.endedUnswept(v != nil))
	if se.slot {
		<-se.s.execSlots
	}
	if se.registered {
		se.s.runs.Done()
	}
}

// drainGrace is how long a session the server ends still forwards what
// its processes wrote before they ended.
const drainGrace = time.Second

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

// pump copies a command's output to the channel. If the channel refuses
// writes (the client went away), it keeps draining so the command never
// blocks on a full pipe before it is ended.
func pump(dst io.Writer, src io.WriterTo) {
	if _, err := src.WriteTo(dst); err != nil {
		_, _ = src.WriteTo(io.Discard)
	}
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
