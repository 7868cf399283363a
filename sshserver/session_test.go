package sshserver

import (
	"bytes"
	"io"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"

	"github.com/darling-sshd/darling-sshd/darlingexec"
)

// channel is a raw session channel, so a test sees every frame.
type channel struct {
	gossh.Channel
	reqs <-chan *gossh.Request
}

func openSession(t *testing.T, c *gossh.Client) *channel {
	t.Helper()
	ch, reqs, err := c.OpenChannel("session", nil)
	if err != nil {
		t.Fatal(err)
	}
	return &channel{ch, reqs}
}

func (ch *channel) request(t *testing.T, typ string, payload any) bool {
	t.Helper()
	var b []byte
	if payload != nil {
		b = gossh.Marshal(payload)
	}
	ok, err := ch.SendRequest(typ, true, b)
	if err != nil {
		t.Fatalf("%s: %v", typ, err)
	}
	return ok
}

func (ch *channel) exec(t *testing.T, cmd string) {
	t.Helper()
	if !ch.request(t, "exec", struct{ Command string }{cmd}) {
		t.Fatal("exec refused")
	}
}

// ending is what a client sees at a session's end.
type ending struct {
	stdout, stderr string
	frames         []string // the channel's requests, in order, seen before EOF
	status         uint32
	signal         string
}

// finish reads the session to its end and checks the frame order: all
// data, exit-status or exit-signal, EOF, close. x/crypto's client queues a
// request before it records a later EOF, so once both streams are at EOF,
// an exit frame sent before them is queued.
func (ch *channel) finish(t *testing.T) ending {
	t.Helper()
	errc := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(ch.Stderr())
		errc <- b
	}()
	out, _ := io.ReadAll(ch)
	e := ending{stdout: string(out), stderr: string(<-errc)}
	for queued := true; queued; {
		select {
		case r, ok := <-ch.reqs:
			if !ok {
				queued = false
				break
			}
			e.frames = append(e.frames, r.Type)
			switch r.Type {
			case "exit-status":
				var st struct{ Status uint32 }
				_ = gossh.Unmarshal(r.Payload, &st)
				e.status = st.Status
			case "exit-signal":
				var sig struct{ Signal string }
				_ = gossh.Unmarshal(r.Payload, &sig)
				e.signal = sig.Signal
			}
		default:
			queued = false
		}
	}
	// Close follows EOF: the requests end.
	select {
	case r, ok := <-ch.reqs:
		if ok {
			t.Errorf("request %q after EOF", r.Type)
		}
	case <-time.After(10 * time.Second):
		t.Error("no close after EOF")
	}
	return e
}

// startExec starts a fake server and runs cmd in a session on it.
func startExec(t *testing.T, cmd string) (*fakeLauncher, *fakeServer, *channel, *fakeCmd) {
	t.Helper()
	f := newFakeLauncher(t)
	s := startFake(t, f, nil)
	ch := openSession(t, s.dial(t))
	ch.exec(t, cmd)
	return f, s, ch, next(t, f)
}

func next(t *testing.T, f *fakeLauncher) *fakeCmd {
	t.Helper()
	select {
	case c := <-f.started:
		return c
	case <-time.After(10 * time.Second):
		t.Fatal("no command started")
		return nil
	}
}

func TestExecFrameOrder(t *testing.T) {
	f := newFakeLauncher(t)
	s := startFake(t, f, nil)
	c := s.dial(t)
	for _, tc := range []struct {
		st     darlingexec.ExitStatus
		frame  string
		status uint32
		signal string
	}{
		{darlingexec.ExitStatus{Code: 3}, "exit-status", 3, ""},
		{darlingexec.ExitStatus{}, "exit-status", 0, ""},
		{darlingexec.ExitStatus{Signal: "KILL"}, "exit-signal", 0, "KILL"},
	} {
		ch := openSession(t, c)
		ch.exec(t, "work")
		cmd := next(t, f)
		if cmd.Req.Command != "work" || cmd.Req.User != "tester" {
			t.Errorf("request %+v", cmd.Req)
		}
		go func() {
			cmd.Out.Write(bytes.Repeat([]byte("o"), 100000))
			cmd.Err.Write([]byte("err"))
			cmd.Exit(tc.st, false)
		}()
		e := ch.finish(t)
		if len(e.stdout) != 100000 || e.stderr != "err" {
			t.Errorf("%+v: output %d bytes, stderr %q", tc.st, len(e.stdout), e.stderr)
		}
		if len(e.frames) != 1 || e.frames[0] != tc.frame || e.status != tc.status || e.signal != tc.signal {
			t.Errorf("%+v: frames %v status %d signal %q, want one %s", tc.st, e.frames, e.status, e.signal, tc.frame)
		}
	}
	if !waitUntil(func() bool { return f.live.Load() == 0 }) {
		t.Errorf("%d commands neither ended nor swept", f.live.Load())
	}
	// 100000 bytes of stdout and 3 of stderr, for each session.
	if !waitUntil(func() bool { return strings.Count(s.log.String(), "bytes_in=0 bytes_out=100003") == 3 }) {
		t.Errorf("session ended lines: %q", regexp.MustCompile(`msg="session ended".*`).FindAllString(s.log.String(), -1))
	}
}

func TestStdinReachesCommand(t *testing.T) {
	_, s, ch, cmd := startExec(t, "cat")
	go func() {
		ch.Write([]byte("hello"))
		ch.CloseWrite()
	}()
	in, _ := io.ReadAll(cmd.inR)
	if string(in) != "hello" {
		t.Errorf("stdin %q", in)
	}
	cmd.Exit(darlingexec.ExitStatus{}, false)
	ch.finish(t)
	if !waitUntil(func() bool { return strings.Contains(s.log.String(), `outcome="status 0"`) }) ||
		!strings.Contains(s.log.String(), "bytes_in=5 ") {
		t.Errorf("session ended line: %q", regexp.MustCompile(`msg="session ended".*`).FindString(s.log.String()))
	}
}

// TestLauncherKilled: a launcher that dies of a signal not sent by the
// server leaves the session orphaned; the session ends its processes,
// which also releases output they held.
func TestLauncherKilledEndsSession(t *testing.T) {
	_, _, ch, cmd := startExec(t, "work")
	cmd.Exit(darlingexec.ExitStatus{Signal: "KILL"}, true)
	e := ch.finish(t)
	if e.signal != "KILL" || !cmd.ended.Load() {
		t.Errorf("signal %q, ended %v", e.signal, cmd.ended.Load())
	}
}

// TestOutputHeldOpen: a background process holding stdout keeps the
// session open after the launcher exits, as with OpenSSH; the exit
// status goes out once it lets go.
func TestOutputHeldOpen(t *testing.T) {
	_, _, ch, cmd := startExec(t, "daemon &")
	cmd.Exit(darlingexec.ExitStatus{Code: 0}, true)
	cmd.Out.Write([]byte("late"))
	select {
	case r := <-ch.reqs:
		t.Fatalf("request %v while output is held", r)
	case <-time.After(200 * time.Millisecond):
	}
	cmd.Out.Close()
	cmd.Err.Close()
	if e := ch.finish(t); e.stdout != "late" || len(e.frames) != 1 || e.frames[0] != "exit-status" {
		t.Errorf("%+v", e)
	}
	if !waitUntil(cmd.swept.Load) {
		t.Error("leftovers not swept")
	}
}

func TestClientGone(t *testing.T) {
	for _, when := range []string{"before start", "while running", "output held", "after exit"} {
		t.Run(when, func(t *testing.T) {
			f := newFakeLauncher(t)
			if when == "before start" {
				f.gate = make(chan struct{})
			}
			s := startFake(t, f, nil)
			c := s.dial(t)
			ch := openSession(t, c)
			ch.exec(t, "work")
			var cmd *fakeCmd
			switch when {
			case "before start":
				c.Close()
				close(f.gate)
				cmd = next(t, f)
			case "while running":
				cmd = next(t, f)
				c.Close()
			case "output held":
				cmd = next(t, f)
				cmd.Exit(darlingexec.ExitStatus{}, true)
				c.Close()
			case "after exit":
				cmd = next(t, f)
				cmd.Exit(darlingexec.ExitStatus{}, false)
				ch.finish(t)
				c.Close()
			}
			if !waitUntil(func() bool { return f.live.Load() == 0 }) {
				t.Fatal("the session's processes were not ended")
			}
			if when != "after exit" && !cmd.ended.Load() {
				t.Error("End not called")
			}
		})
	}
}

func TestShutdownEndsSession(t *testing.T) {
	_, s, ch, cmd := startExec(t, "work")
	go s.stop()
	e := ch.finish(t)
	if e.status != 255 || !strings.Contains(e.stderr, "server is shutting down") || !cmd.ended.Load() {
		t.Errorf("%+v ended=%v", e, cmd.ended.Load())
	}
}

func TestStartFails(t *testing.T) {
	f := newFakeLauncher(t)
	f.startErr = errFake
	s := startFake(t, f, nil)
	ch := openSession(t, s.dial(t))
	ch.exec(t, "work")
	if e := ch.finish(t); e.status != 255 || !strings.Contains(e.stderr, errFake.Error()) {
		t.Errorf("%+v", e)
	}
}

// TestRequestsWhileStarting: a start that waits (a warm-up) never holds
// up the channel's requests; a size sent meanwhile reaches the terminal.
func TestRequestsWhileStarting(t *testing.T) {
	f := newFakeLauncher(t)
	f.gate = make(chan struct{})
	s := startFake(t, f, nil)
	ch := openSession(t, s.dial(t))
	if !ch.request(t, "pty-req", ptyRequest{Term: "xterm", Cols: 80, Rows: 24}) {
		t.Fatal("pty-req refused")
	}
	if !ch.request(t, "shell", nil) {
		t.Fatal("shell refused")
	}
	if !ch.request(t, "window-change", windowChange{Cols: 100, Rows: 40}) {
		t.Error("window-change while starting refused")
	}
	if ch.request(t, "env", struct{ Name, Value string }{"LANG", "C"}) {
		t.Error("env accepted after the shell started")
	}
	close(f.gate)
	cmd := next(t, f)
	if got := <-cmd.resized; got != [2]uint16{100, 40} {
		t.Errorf("resized to %v", got)
	}
	if !ch.request(t, "signal", struct{ Name string }{"INT"}) || <-cmd.signals != "INT" {
		t.Error("signal not delivered")
	}
	cmd.Exit(darlingexec.ExitStatus{}, false)
	ch.finish(t)
}

// TestPanicEndsSession: a panic in a session ends its processes, gives
// back its exec slot and closes its connection only.
func TestPanicEndsSession(t *testing.T) {
	f := newFakeLauncher(t)
	s := startFake(t, f, func(o *Options) { o.MaxExec = 1 })
	other := s.dial(t)
	c := s.dial(t)
	ch := openSession(t, c)
	ch.exec(t, "work")
	cmd := next(t, f)
	f.panicOn.Store("Resize")
	ch.SendRequest("window-change", false, gossh.Marshal(windowChange{Cols: 1, Rows: 1}))
	_ = c.Wait() // the connection closes first, then the processes end
	if !waitUntil(cmd.ended.Load) {
		t.Error("End not called after the panic")
	}
	if !strings.Contains(s.log.String(), "session panic") {
		t.Error("panic not logged")
	}
	f.panicOn.Store("")
	// The slot is free: the other connection's exec starts.
	och := openSession(t, other)
	och.exec(t, "next")
	next(t, f).Exit(darlingexec.ExitStatus{Code: 7}, false)
	if e := och.finish(t); e.status != 7 {
		t.Errorf("other connection: %+v", e)
	}
}

// TestSessionsLeaveNothing runs sessions of every kind, and checks that
// goroutines and commands come back to where they started.
func TestSessionsLeaveNothing(t *testing.T) {
	f := newFakeLauncher(t)
	s := startFake(t, f, func(o *Options) { o.MaxExec = 4 })
	warm := s.dial(t)
	runKinds(t, s, f, warm, 1)
	warm.Close()
	g0 := settledGoroutines()
	runKinds(t, s, f, nil, 200)
	if !waitUntil(func() bool { return f.live.Load() == 0 }) {
		t.Errorf("%d commands left running", f.live.Load())
	}
	if !waitUntil(func() bool { return runtime.NumGoroutine() <= g0 }) {
		buf := make([]byte, 1<<20)
		t.Errorf("goroutines: %d, started with %d\n%s", runtime.NumGoroutine(), g0, buf[:runtime.Stack(buf, true)])
	}
}

// settledGoroutines is the goroutine count once closed connections have
// wound down.
func settledGoroutines() int {
	n := runtime.NumGoroutine()
	for range 50 {
		time.Sleep(20 * time.Millisecond)
		m := runtime.NumGoroutine()
		if m == n {
			return n
		}
		n = m
	}
	return n
}

// runKinds runs n sessions of each kind: exec, pty shell, SFTP, a client
// killed mid-session, a launcher killed, a panic, a failed start.
func runKinds(t *testing.T, s *fakeServer, f *fakeLauncher, c *gossh.Client, n int) {
	t.Helper()
	if c == nil {
		c = s.dial(t)
		defer c.Close()
	}
	for range n {
		ch := openSession(t, c)
		ch.exec(t, "work")
		next(t, f).Exit(darlingexec.ExitStatus{}, false)
		ch.finish(t)

		ch = openSession(t, c)
		ch.request(t, "pty-req", ptyRequest{Term: "xterm", Cols: 80, Rows: 24})
		ch.request(t, "shell", nil)
		next(t, f).Exit(darlingexec.ExitStatus{Code: 1}, false)
		ch.finish(t)

		ch = openSession(t, c)
		if !ch.request(t, "subsystem", struct{ Name string }{"sftp"}) {
			t.Fatal("sftp refused")
		}
		ch.Close()
		for range ch.reqs {
		}

		ch = openSession(t, c)
		ch.exec(t, "work")
		next(t, f).Exit(darlingexec.ExitStatus{Signal: "KILL"}, true)
		ch.finish(t)

		killed := s.dial(t)
		ch = openSession(t, killed)
		ch.exec(t, "work")
		next(t, f)
		killed.Close()

		panicky := s.dial(t)
		ch = openSession(t, panicky)
		ch.exec(t, "work")
		next(t, f)
		f.panicOn.Store("Resize")
		ch.SendRequest("window-change", false, gossh.Marshal(windowChange{Cols: 1, Rows: 1}))
		_ = panicky.Wait()
		f.panicOn.Store("")
	}
}
