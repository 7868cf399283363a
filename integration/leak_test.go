package integration

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pkg/sftp"
	gossh "golang.org/x/crypto/ssh"
)

// TestSessionsLeaveNothing runs sessions of every kind a real client and
// a real launcher make (exec, pty shell, SFTP, a client killed mid-session,
// a launcher killed mid-session) against the real server, and checks that
// its goroutines, its children and the session processes in the prefix
// come back to where they started. sshserver's TestSessionsLeaveNothing
// does the same 200 times per kind with a fake command, panics included.
func TestSessionsLeaveNothing(t *testing.T) {
	pprofAddr := freeAddr(t)
	s := startServer(t, serverOpt{args: []string{"--pprof", pprofAddr}})
	c := s.dialGo(t)
	round := func() {
		if out, err := newSession(t, c).Output("echo ok"); err != nil || string(out) != "ok\n" {
			t.Fatalf("exec: %q %v", out, err)
		}
		ptyShell(t, c)
		sftpList(t, c)
		killedClient(t, s)
		killedLauncher(t, s, c)
	}
	round()
	g0 := settled(func() int { return pprofGoroutines(t, pprofAddr) })
	for range 20 {
		round()
	}
	launchd := launchdOf(t, containerPidOf(s.prefix))
	// Launchers started ahead of sessions (--prespawn) and their shells in
	// the container wait for a request: they are not sessions.
	notIdle := func(pids []int) []int {
		return slices.DeleteFunc(pids, func(pid int) bool {
			cl, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
			return waitsForRequest(string(cl))
		})
	}
	if !waitFor(30*time.Second, func() bool {
		return len(notIdle(sessionProcs(launchd))) == 0 && len(notIdle(childrenOf(s.cmd.Process.Pid))) == 0
	}) {
		var left []string
		for _, pid := range append(notIdle(sessionProcs(launchd)), notIdle(childrenOf(s.cmd.Process.Pid))...) {
			cl, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
			left = append(left, fmt.Sprintf("%d %q", pid, cl))
		}
		t.Errorf("left running: %v", left)
	}
	if !waitFor(30*time.Second, func() bool { return pprofGoroutines(t, pprofAddr) <= g0 }) {
		t.Errorf("goroutines: %d, %d after the first round", pprofGoroutines(t, pprofAddr), g0)
	}
	t.Logf("goroutines: %d after the first round, %d after 20 more", g0, pprofGoroutines(t, pprofAddr))
}

func newSession(t *testing.T, c *gossh.Client) *gossh.Session {
	t.Helper()
	sess, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	return sess
}

// ptyShell logs in on a terminal and leaves with exit.
func ptyShell(t *testing.T, c *gossh.Client) {
	sess := newSession(t, c)
	if err := sess.RequestPty("xterm", 24, 80, gossh.TerminalModes{}); err != nil {
		t.Fatal(err)
	}
	sess.Stdin = strings.NewReader("exit 3\n")
	sess.Stdout = io.Discard
	if err := sess.Shell(); err != nil {
		t.Fatal(err)
	}
	if err := sess.Wait(); err == nil {
		t.Error("pty shell: exit 3 reported as success")
	}
}

// sftpList lists the prefix's root over SFTP.
func sftpList(t *testing.T, c *gossh.Client) {
	sc, err := sftp.NewClient(c)
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	if _, err := sc.ReadDir("/"); err != nil {
		t.Fatal(err)
	}
}

// killedClient starts a long command and drops the connection.
func killedClient(t *testing.T, s *server) {
	c := s.dialGo(t)
	d := uniqueSleep()
	if err := newSession(t, c).Start("sleep " + d); err != nil {
		t.Fatal(err)
	}
	if !waitFor(time.Minute, func() bool { return len(procsWithArgs("sleep", d)) == 1 }) {
		t.Fatal("sleep never started")
	}
	c.Close()
}

// killedLauncher SIGKILLs a session's launcher mid-command.
func killedLauncher(t *testing.T, s *server, c *gossh.Client) {
	sess := newSession(t, c)
	d := uniqueSleep()
	if err := sess.Start("sleep " + d); err != nil {
		t.Fatal(err)
	}
	launcher := s.launcherOfSleep(t, d)
	if err := syscall.Kill(launcher, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = sess.Wait()
}

// launcherOfSleep waits for `sleep d` to run in a session and returns
// that session's launcher, as the server logged it.
func (s *server) launcherOfSleep(t *testing.T, d string) int {
	t.Helper()
	started := regexp.MustCompile(`msg="exec started" .* pid=(\d+) command="sleep ` + d + `"`)
	var launcher int
	if !waitFor(time.Minute, func() bool {
		m := started.FindStringSubmatch(s.log.String())
		if m == nil || len(procsWithArgs("sleep", d)) != 1 {
			return false
		}
		launcher, _ = strconv.Atoi(m[1])
		return true
	}) {
		t.Fatal("session never started")
	}
	return launcher
}

// sessionProcs lists the live processes that carry a session marker in
// the PID namespace of the container whose launchd is given: the
// sessions of one server (other tests run servers of their own).
func sessionProcs(launchd int) []int {
	ns, _ := os.Readlink("/proc/" + strconv.Itoa(launchd) + "/ns/pid")
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		env, err := os.ReadFile("/proc/" + e.Name() + "/environ")
		theirs, _ := os.Readlink("/proc/" + e.Name() + "/ns/pid")
		if err == nil && theirs == ns && bytes.Contains(env, []byte("DARLING_SSHD_SESSION=")) && alive(pid) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// childrenOf lists pid's live children (a server's are launchers).
func childrenOf(pid int) []int {
	b, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/task/" + strconv.Itoa(pid) + "/children")
	var kids []int
	for _, f := range strings.Fields(string(b)) {
		if k, err := strconv.Atoi(f); err == nil && alive(k) {
			kids = append(kids, k)
		}
	}
	return kids
}

// pprofGoroutines reads the server's goroutine count from its pprof
// endpoint.
func pprofGoroutines(t *testing.T, addr string) int {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/debug/pprof/goroutine?debug=1")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	first, _, _ := strings.Cut(string(b), "\n")
	n, err := strconv.Atoi(strings.TrimPrefix(first, "goroutine profile: total "))
	if err != nil {
		t.Fatalf("goroutine profile: %q", first)
	}
	return n
}

// settled returns count once two readings 200 ms apart agree: closed
// connections take a moment to wind down, and have no event to wait on.
func settled(count func() int) int {
	n := count()
	for range 50 {
		time.Sleep(200 * time.Millisecond)
		m := count()
		if m == n {
			return n
		}
		n = m
	}
	return n
}

// freeAddr returns a loopback address nothing listens on.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}
