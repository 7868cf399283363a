package integration

import (
	"bufio"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"
)

// TestBadInput: each kind of bad input gets a clear error and nothing
// else: the server keeps serving after every case.
func TestBadInput(t *testing.T) {
	s := startServer(t, serverOpt{})
	c := s.dialGo(t)
	// request sends one channel request on a fresh session channel and
	// returns the reply.
	request := func(typ string, payload []byte) bool {
		t.Helper()
		ch, reqs, err := c.OpenChannel("session", nil)
		if err != nil {
			t.Fatal(err)
		}
		defer ch.Close()
		go gossh.DiscardRequests(reqs)
		ok, err := ch.SendRequest(typ, true, payload)
		if err != nil {
			t.Fatalf("%s: %v", typ, err)
		}
		return ok
	}
	// execResult runs cmd with the Go client and returns status and stderr.
	execResult := func(cmd string, env map[string]string) (int, string) {
		t.Helper()
		sess, err := c.NewSession()
		if err != nil {
			t.Fatal(err)
		}
		defer sess.Close()
		for k, v := range env {
			sess.Setenv(k, v)
		}
		var stderr strings.Builder
		sess.Stderr = &stderr
		err = sess.Run(cmd)
		if ee, ok := err.(*gossh.ExitError); ok {
			return ee.ExitStatus(), stderr.String()
		}
		if err != nil {
			t.Fatalf("%q: %v", cmd, err)
		}
		return 0, stderr.String()
	}
	cases := []struct {
		name string
		run  func(t *testing.T)
	}{
		{"over-long command", func(t *testing.T) {
			if code, msg := execResult("echo "+strings.Repeat("x", 70000), nil); code != 255 || !strings.Contains(msg, "too long") {
				t.Errorf("exit %d %q", code, msg)
			}
		}},
		{"over-long environment value", func(t *testing.T) {
			if code, msg := execResult("true", map[string]string{"LANG": strings.Repeat("x", 70000)}); code != 255 || !strings.Contains(msg, "too long") {
				t.Errorf("exit %d %q", code, msg)
			}
		}},
		{"NUL in the command", func(t *testing.T) {
			if code, msg := execResult("echo a\x00b", nil); code != 255 || !strings.Contains(msg, "NUL") {
				t.Errorf("exit %d %q", code, msg)
			}
		}},
		{"malformed exec", func(t *testing.T) {
			if request("exec", []byte{0, 0, 0, 9, 'x'}) {
				t.Error("accepted")
			}
		}},
		{"malformed env", func(t *testing.T) {
			if request("env", []byte{1, 2}) {
				t.Error("accepted")
			}
		}},
		{"malformed pty-req", func(t *testing.T) {
			if request("pty-req", []byte{0, 0, 0, 200}) {
				t.Error("accepted")
			}
		}},
		{"pty-req with broken modes", func(t *testing.T) {
			if request("pty-req", ptyReq("xterm", 80, 24, []byte{53, 0, 0})) {
				t.Error("accepted")
			}
		}},
		{"pty-req with a control character in TERM", func(t *testing.T) {
			if request("pty-req", ptyReq("xterm\n", 80, 24, nil)) {
				t.Error("accepted")
			}
		}},
		{"malformed window-change", func(t *testing.T) {
			if request("window-change", []byte{1}) {
				t.Error("accepted")
			}
		}},
		{"malformed signal", func(t *testing.T) {
			if request("signal", []byte{0xff}) {
				t.Error("accepted")
			}
		}},
		{"unknown request", func(t *testing.T) {
			if request("frobnicate@example.com", nil) {
				t.Error("accepted")
			}
		}},
		{"second exec on one channel", func(t *testing.T) {
			ch, reqs, err := c.OpenChannel("session", nil)
			if err != nil {
				t.Fatal(err)
			}
			defer ch.Close()
			go gossh.DiscardRequests(reqs)
			exec := gossh.Marshal(struct{ Command string }{"sleep 1"})
			if ok, _ := ch.SendRequest("exec", true, exec); !ok {
				t.Fatal("first exec refused")
			}
			if ok, _ := ch.SendRequest("exec", true, exec); ok {
				t.Error("second exec accepted")
			}
		}},
		{"forwarding and agent", func(t *testing.T) {
			if _, err := c.Dial("tcp", s.addr); err == nil {
				t.Error("direct-tcpip accepted")
			}
			if _, err := c.Listen("tcp", "127.0.0.1:0"); err == nil {
				t.Error("tcpip-forward accepted")
			}
			if request("auth-agent-req@openssh.com", nil) || request("x11-req", nil) {
				t.Error("agent or X11 forwarding accepted")
			}
			if _, _, err := c.OpenChannel("frobnicate", nil); err == nil {
				t.Error("an unknown channel type was accepted")
			}
		}},
		{"garbage before the banner", func(t *testing.T) {
			conn, err := net.Dial("tcp", s.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			conn.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n" + strings.Repeat("\x00\xff", 5000)))
			conn.SetReadDeadline(time.Now().Add(time.Minute))
			// EOF or a reset: closed either way; only a timeout is wrong.
			if _, err := io.Copy(io.Discard, conn); err != nil {
				if ne, ok := err.(net.Error); ok && ne.Timeout() {
					t.Errorf("the server did not close a garbage connection")
				}
			}
		}},
		{"1000 connections at once", func(t *testing.T) {
			var wg sync.WaitGroup
			for range 1000 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					conn, err := net.DialTimeout("tcp", s.addr, time.Minute)
					if err != nil {
						return
					}
					conn.SetDeadline(time.Now().Add(time.Minute))
					bufio.NewReader(conn).ReadString('\n')
					conn.Close()
				}()
			}
			wg.Wait()
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tc.run(t)
			if code, _ := execResult("true", nil); code != 0 {
				t.Errorf("the server stopped serving after %s", tc.name)
			}
		})
	}
}

// TestNonReadingClientBounded: a client that stops reading its output
// does not make the server buffer without bound.
func TestNonReadingClientBounded(t *testing.T) {
	s := startServer(t, serverOpt{})
	rss := func() int {
		b, _ := os.ReadFile("/proc/" + strconv.Itoa(s.cmd.Process.Pid) + "/status")
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
				n, _ := strconv.Atoi(strings.Fields(v)[0])
				return n
			}
		}
		return 0
	}
	c := s.dialGo(t)
	sess, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sess.StdoutPipe(); err != nil { // never read
		t.Fatal(err)
	}
	before := rss()
	if err := sess.Start("head -c 1000000000 /dev/zero"); err != nil {
		t.Fatal(err)
	}
	// The command writes until the pipe and the window are full; give it
	// the time to write far more than the window, had it not blocked.
	if !waitFor(time.Minute, func() bool { return len(procsInPrefix(s.prefix, "head")) > 0 }) {
		t.Fatal("command never started")
	}
	time.Sleep(2 * time.Second)
	if grown := rss() - before; grown > 64*1024 {
		t.Errorf("server memory grew by %d KiB with a client that does not read", grown)
	}
	sess.Close()
}
