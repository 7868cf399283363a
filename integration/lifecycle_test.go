package integration

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// uniqueSleep returns a sleep duration no other test uses, so the
// process can be found by its command line.
func uniqueSleep() string {
	return strconv.Itoa(100000 + rand.IntN(800000))
}

// TestKilledClientEndsProcesses kills the ssh client: the command and what
// it started in the background must be gone within the kill grace.
func TestKilledClientEndsProcesses(t *testing.T) {
	s := startServer(t, serverOpt{})
	a, b := uniqueSleep(), uniqueSleep()
	cmd := s.ssh(context.Background(), "dut", fmt.Sprintf("sleep %s & sleep %s", a, b))
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	running := func() bool { return len(procsWithArgs("sleep", a)) == 1 && len(procsWithArgs("sleep", b)) == 1 }
	if !waitFor(time.Minute, running) {
		cmd.Process.Kill()
		t.Fatalf("remote sleeps never started")
	}
	cmd.Process.Kill()
	cmd.Wait()
	gone := func() bool { return len(procsWithArgs("sleep", a)) == 0 && len(procsWithArgs("sleep", b)) == 0 }
	if !waitFor(killGrace+5*time.Second, gone) {
		t.Errorf("remote processes still running %s after the client was killed: %v %v",
			killGrace+5*time.Second, procsWithArgs("sleep", a), procsWithArgs("sleep", b))
	}
	// Those sleeps ignore nothing: SIGHUP ends them. A command that
	// ignores SIGHUP must still go, by SIGKILL after the grace.
	c := uniqueSleep()
	cmd = s.ssh(context.Background(), "dut", fmt.Sprintf("trap '' HUP; sleep %s", c))
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	if !waitFor(time.Minute, func() bool { return len(procsWithArgs("sleep", c)) == 1 }) {
		cmd.Process.Kill()
		t.Fatalf("remote sleep never started")
	}
	cmd.Process.Kill()
	cmd.Wait()
	if !waitFor(killGrace+5*time.Second, func() bool { return len(procsWithArgs("sleep", c)) == 0 }) {
		t.Errorf("a process ignoring SIGHUP survived the kill grace")
	}
}

// TestControlMaster runs four sessions over one connection; ending one
// ends only its own processes.
func TestControlMaster(t *testing.T) {
	s := startServer(t, serverOpt{})
	sock := filepath.Join(s.dir, "cm")
	master := s.ssh(context.Background(), "-o", "ControlMaster=yes", "-o", "ControlPath="+sock, "-N", "dut")
	if err := master.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		master.Process.Kill()
		master.Wait()
	}()
	if !waitFor(time.Minute, func() bool {
		return s.ssh(context.Background(), "-o", "ControlPath="+sock, "-O", "check", "dut").Run() == nil
	}) {
		t.Fatal("control master never came up")
	}
	var clients []*exec.Cmd
	var sleeps []string
	for range 4 {
		d := uniqueSleep()
		c := s.ssh(context.Background(), "-o", "ControlPath="+sock, "dut", "sleep "+d)
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		clients, sleeps = append(clients, c), append(sleeps, d)
	}
	defer func() {
		for _, c := range clients {
			c.Process.Kill()
			c.Wait()
		}
	}()
	if !waitFor(time.Minute, func() bool {
		for _, d := range sleeps {
			if len(procsWithArgs("sleep", d)) != 1 {
				return false
			}
		}
		return true
	}) {
		t.Fatal("four sessions over one connection did not all start")
	}
	// One connection: the server saw a single TCP peer for all four.
	if !waitFor(10*time.Second, func() bool { return strings.Count(s.log.String(), "exec started") == 4 }) {
		t.Errorf("server saw %d exec sessions, want 4", strings.Count(s.log.String(), "exec started"))
	}
	clients[0].Process.Kill()
	clients[0].Wait()
	if !waitFor(killGrace+5*time.Second, func() bool { return len(procsWithArgs("sleep", sleeps[0])) == 0 }) {
		t.Fatal("the closed session's process survived")
	}
	for _, d := range sleeps[1:] {
		if len(procsWithArgs("sleep", d)) != 1 {
			t.Errorf("sleep %s of another session was ended too", d)
		}
	}
	// Ending a session normally over the master works too.
	out, err := s.ssh(context.Background(), "-o", "ControlPath="+sock, "dut", "echo via master").Output()
	if err != nil || string(out) != "via master\n" {
		t.Errorf("session over master: %v %q", err, out)
	}
}

// TestAuthRefused: a wrong key, an unknown user and a password attempt
// are all refused, and each refusal is logged with its reason.
func TestAuthRefused(t *testing.T) {
	s := startServer(t, serverOpt{})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	other := newKey(t, s.dir, "id_other")

	wrongKey := exec.CommandContext(ctx, "ssh", "-F", "/dev/null", "-p", s.port, "-i", other, "-o", "IdentitiesOnly=yes",
		"-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "root@127.0.0.1", "true")
	if out, err := wrongKey.CombinedOutput(); err == nil || !strings.Contains(string(out), "Permission denied") {
		t.Errorf("wrong key: %v %s", err, out)
	}
	if !s.logged(`reason="key not authorized"`) {
		t.Errorf("wrong key refusal not logged")
	}

	if out, err := s.ssh(ctx, "-l", "nobody", "dut", "true").CombinedOutput(); err == nil || !strings.Contains(string(out), "Permission denied") {
		t.Errorf("unknown user: %v %s", err, out)
	}
	if !s.logged(`reason="user not allowed" user=nobody`) {
		t.Errorf("unknown user refusal not logged")
	}

	pw := s.ssh(ctx, "-o", "PubkeyAuthentication=no", "-o", "PreferredAuthentications=password,keyboard-interactive", "dut", "true")
	out, err := pw.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "Permission denied (publickey)") {
		t.Errorf("password attempt: %v %s (want only publickey offered)", err, out)
	}
	if r := s.exec("echo ok", ""); r.stdout != "ok\n" {
		t.Errorf("right key after refusals: %+v", r)
	}
}

// TestColdStartFixtureHoldsStdout shows the stand-in reproduces Darling's
// cold-start bug (#1510) that the warm-up exists for: the first call's
// stdout never reaches EOF, as the container keeps it.
func TestColdStartFixtureHoldsStdout(t *testing.T) {
	prefix := tempPrefix(t)
	cmd := standin(prefix, "shell", "echo", "hello")
	// Our own pipe, not StdoutPipe: Wait closes that one, and then the
	// read end would be ours to close, not the container's to hold.
	stdout, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer stdout.Close()
	cmd.Stdout = w
	err = cmd.Start()
	w.Close()
	if err != nil {
		t.Fatal(err)
	}
	// Read until the command's own output arrived; the launcher exits.
	var got bytes.Buffer
	buf := make([]byte, 4096)
	for !strings.Contains(got.String(), "hello\n") {
		n, err := stdout.Read(buf)
		got.Write(buf[:n])
		if err != nil {
			t.Fatalf("stdout ended early: %v %q", err, got.String())
		}
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("launcher: %v", err)
	}
	// The launcher has exited, yet stdout stays open: the container holds
	// it, so a read waits (here until its deadline) instead of seeing EOF.
	stdout.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if _, err := io.Copy(io.Discard, stdout); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("stdout ended (%v) although the container holds it", err)
	}
	// Shutting the container down releases it.
	stdout.SetReadDeadline(time.Time{})
	shutdownStandin(prefix)
	if _, err := io.Copy(io.Discard, stdout); err != nil {
		t.Errorf("stdout after shutdown: %v", err)
	}
}

// TestColdPrefixWarmUp: every server here starts on a prefix that does not
// exist yet. The first session is still clean, and after the container
// dies the next session is clean too: the server warms it again first.
func TestColdPrefixWarmUp(t *testing.T) {
	s := startServer(t, serverOpt{})
	if r := s.exec("echo first", ""); r.stdout != "first\n" || r.stderr != "" || r.code != 0 {
		t.Errorf("first session on a cold prefix: %+v", r)
	}
	if out, err := standin(s.prefix, "shutdown").CombinedOutput(); err != nil {
		t.Fatalf("shutdown: %v %s", err, out)
	}
	if r := s.exec("echo again", ""); r.stdout != "again\n" || r.stderr != "" || r.code != 0 {
		t.Errorf("first session after the container died: %+v", r)
	}
	if !waitFor(10*time.Second, func() bool { return strings.Count(s.log.String(), `msg="prefix warm"`) == 2 }) {
		t.Errorf("prefix warmed %d times, want 2 (start, after the container died)", strings.Count(s.log.String(), `msg="prefix warm"`))
	}
}

// TestWarmUpFailsStartup: a launcher that never answers fails start-up
// with a line naming the prefix.
func TestWarmUpFailsStartup(t *testing.T) {
	dir := t.TempDir()
	hang := filepath.Join(dir, "hanging-darling")
	if err := os.WriteFile(hang, []byte("#!/bin/sh\nexec sleep 1000\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	key := newKey(t, dir, "id")
	cmd := exec.Command(bins.server, "serve", "--listen", "127.0.0.1:0", "--prefix", "/nonexistent/prefix",
		"--darling", hang, "--host-key", filepath.Join(dir, "hk"), "--authorized-keys", key+".pub", "--warm-timeout", "1s")
	cmd.Env = []string{"HOME=/root", "PATH=/usr/bin:/bin", noRaceExitSleep}
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 {
		t.Fatalf("serve with a hanging launcher: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "/nonexistent/prefix") || !strings.Contains(string(out), "no answer within 1s") {
		t.Errorf("error does not name the prefix and the cause:\n%s", out)
	}
}

// TestServerShutdownEndsSessions: SIGTERM ends a running session with
// exit status 255 and a line on stderr, and its processes.
func TestServerShutdownEndsSessions(t *testing.T) {
	s := startServer(t, serverOpt{})
	d := uniqueSleep()
	cmd := s.ssh(context.Background(), "dut", "sleep "+d)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	if !waitFor(time.Minute, func() bool { return len(procsWithArgs("sleep", d)) == 1 }) {
		t.Fatal("remote sleep never started")
	}
	s.cmd.Process.Signal(syscall.SIGTERM)
	cmd.Wait()
	if code := cmd.ProcessState.ExitCode(); code != 255 || !strings.Contains(stderr.String(), "shutting down") {
		t.Errorf("session at shutdown: exit %d stderr %q", code, stderr.String())
	}
	if len(procsWithArgs("sleep", d)) != 0 {
		t.Errorf("session process survived the server's shutdown")
	}
	<-s.exited
}

// cpuTicks returns a process's user and system CPU time in clock ticks.
func cpuTicks(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+2:]))
	utime, _ := strconv.Atoi(f[11])
	stime, _ := strconv.Atoi(f[12])
	return utime + stime
}

// TestOutputHeldOpenIsIdle: after the launcher exits, a background process
// holding the session's output keeps it open; the server waits for it
// without spinning (a closed channel left in a select once made the
// session's goroutine burn a core for as long as the output stayed open).
// A session with a pty and one without hold their output for 12 s at the
// same time; the server's CPU time over 8 s in the middle of the hold
// must stay under 0.5% of it. Their cgroups hold them whole, so not even
// the tracker's walks of /proc run (they cost 60-100 ms per 10 s here on
// a race build). The window leaves out the sessions' start and end,
// which are not idling.
func TestOutputHeldOpenIsIdle(t *testing.T) {
	s := startServer(t, serverOpt{})
	const hold, window = 12 * time.Second, 8 * time.Second
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var cmds []*exec.Cmd
	for _, extra := range [][]string{nil, {"-tt"}} {
		cmd := s.ssh(ctx, append(extra, "dut", "sleep "+strconv.Itoa(int(hold.Seconds()))+" & echo hi")...)
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// The launcher has exited once "hi" is out: from here on, only
		// the background sleep holds the output. A terminal shows the
		// prefix's login noise first.
		for r := bufio.NewReader(out); ; {
			line, err := r.ReadString('\n')
			if err != nil {
				t.Fatalf("ssh %v: %q %v", extra, line, err)
			}
			if strings.TrimSpace(line) == "hi" {
				break
			}
		}
		cmds = append(cmds, cmd)
	}
	held := time.Now()
	// A measuring window, not a wait for an event: the sessions settle
	// first (their launchers' exit is handled), and it ends well before
	// the sleeps do.
	time.Sleep(time.Second)
	before := cpuTicks(t, s.cmd.Process.Pid)
	time.Sleep(window)
	used := time.Duration(cpuTicks(t, s.cmd.Process.Pid)-before) * time.Second / 100
	for _, cmd := range cmds {
		if err := cmd.Wait(); err != nil {
			t.Errorf("%v: %v", cmd.Args, err)
		}
	}
	if wall := time.Since(held); wall < hold*8/10 {
		t.Fatalf("the sessions ended after %v: the output was not held", wall)
	}
	if limit := window / 200; used >= limit {
		t.Errorf("the server used %v of CPU in %v while two sessions' output was held (limit %v)", used, window, limit)
	}
	t.Logf("server CPU %v in %v with two sessions' output held", used, window)
}
