package integration

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestShutdownWithClientNotReading: SIGTERM ends the server even while a
// client does not read its session's output, which holds the server's
// writes on a full window.
func TestShutdownWithClientNotReading(t *testing.T) {
	s := startServer(t, serverOpt{})
	c := s.dialGo(t)
	sess, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	_, err = sess.StdoutPipe() // never read
	if err != nil {
		t.Fatal(err)
	}
	if err := sess.Start("yes"); err != nil {
		t.Fatal(err)
	}
	if !waitFor(time.Minute, func() bool { return len(procsInPrefix(s.prefix, "yes")) > 0 }) {
		t.Fatal("yes never started")
	}
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exited:
	case <-time.After(killGrace + 5*time.Second + 30*time.Second):
		t.Fatal("server did not exit on SIGTERM with a client that does not read")
	}
	if left := procsInPrefix(s.prefix, "yes"); len(left) != 0 {
		t.Errorf("session processes left: %v", left)
	}
}

// TestLoginGraceTime: a connection that never logs in is closed.
func TestLoginGraceTime(t *testing.T) {
	s := startServer(t, serverOpt{args: []string{"--login-grace-time", "1s"}})
	conn, err := net.Dial("tcp", s.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	banner, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil || !strings.HasPrefix(banner, "SSH-2.0-darling-sshd") {
		t.Fatalf("banner %q %v", banner, err)
	}
	// Say nothing more; the server must close the connection.
	conn.SetReadDeadline(time.Now().Add(time.Minute))
	buf := make([]byte, 4096)
	for {
		if _, err := conn.Read(buf); err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				t.Fatal("connection still open a minute after a 1s login grace time")
			}
			break
		}
	}
	if !s.logged("login grace time exceeded") {
		t.Error("not logged")
	}
	// A client that logs in in time is not cut off later.
	if r := s.exec("sleep 2; echo survived", ""); r.stdout != "survived\n" {
		t.Errorf("session longer than the grace time: %+v", r)
	}
}

// TestInheritedFdsDoNotLeak: a file descriptor the server inherited
// without close-on-exec never reaches the launcher or the command.
func TestInheritedFdsDoNotLeak(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	var st syscall.Stat_t
	if err := syscall.Fstat(int(w.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	pipe := fmt.Sprintf("pipe:[%d]", st.Ino)
	s := startServer(t, serverOpt{files: []*os.File{w, w, w, w, w}})
	d := uniqueSleep()
	ctx, cancel := context.WithCancel(context.Background())
	cmd := s.ssh(ctx, "dut", "ls -l /proc/self/fd; exec sleep "+d)
	var out syncBuffer
	cmd.Stdout = &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cancel()
		cmd.Wait()
	}()
	if !waitFor(time.Minute, func() bool { return len(procsWithArgs("sleep", d)) == 1 }) {
		t.Fatal("the command never started")
	}
	if strings.Contains(out.String(), pipe) {
		t.Errorf("the command holds the server's inherited %s:\n%s", pipe, out.String())
	}
	// The session's launcher, and the launchers started ahead of
	// sessions (--prespawn), all of the server's.
	launchers := append(s.poolMembers(), startedPid(s, "ls -l /proc/self/fd"))
	if launchers[len(launchers)-1] == 0 {
		t.Fatalf("the session's launcher is not in the log:\n%s", s.log.String())
	}
	for _, l := range launchers {
		ents, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", l))
		for _, e := range ents {
			if target, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", l, e.Name())); target == pipe {
				t.Errorf("launcher %d holds the server's inherited %s as fd %s", l, pipe, e.Name())
			}
		}
	}
}
