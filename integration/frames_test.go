package integration

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"
)

// dialGo connects with the Go SSH client, pinning the server's host key.
func (s *server) dialGo(t *testing.T) *gossh.Client {
	t.Helper()
	return s.dialGoWith(t, gossh.Config{})
}

// dialGoWith is dialGo with the client's transport settings (ciphers,
// rekey threshold).
func (s *server) dialGoWith(t *testing.T, cfg gossh.Config) *gossh.Client {
	t.Helper()
	keyPEM, err := os.ReadFile(s.clientKey)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := gossh.ParsePrivateKey(keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	hostPEM, err := os.ReadFile(s.hostKey)
	if err != nil {
		t.Fatal(err)
	}
	host, err := gossh.ParsePrivateKey(hostPEM)
	if err != nil {
		t.Fatal(err)
	}
	c, err := gossh.Dial("tcp", net.JoinHostPort("127.0.0.1", s.port), &gossh.ClientConfig{
		Config:          cfg,
		User:            "root",
		Auth:            []gossh.AuthMethod{gossh.PublicKeys(signer)},
		HostKeyCallback: gossh.FixedHostKey(host.PublicKey()),
		Timeout:         time.Minute,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestFrameOrder pins the session's contract, OpenSSH sshd's order: all
// stdout and stderr data, then exit-status, then EOF, then close.
//
// x/crypto's client handles a channel's messages in arrival order on one
// goroutine: a request is queued on reqs before a later EOF is recorded,
// and data is buffered before a later request is queued. So when our
// reads see EOF, an exit-status sent before that EOF is already queued.
func TestFrameOrder(t *testing.T) {
	s := startServer(t, serverOpt{})
	c := s.dialGo(t)
	for _, tc := range []struct {
		cmd            string
		stdout, stderr string
		status         uint32
	}{
		{"printf out; printf err >&2; exit 3", "out", "err", 3},
		{"head -c 3000000 /dev/zero | tr '\\0' o; head -c 100000 /dev/zero | tr '\\0' e >&2", string(bytes.Repeat([]byte("o"), 3000000)), string(bytes.Repeat([]byte("e"), 100000)), 0},
		{"printf late >&2; exec 1>&-; sleep 0.2; printf later >&2", "", "latelater", 0},
	} {
		ch, reqs, err := c.OpenChannel("session", nil)
		if err != nil {
			t.Fatal(err)
		}
		ok, err := ch.SendRequest("exec", true, gossh.Marshal(struct{ Command string }{tc.cmd}))
		if err != nil || !ok {
			t.Fatalf("exec: %v %v", ok, err)
		}
		ch.CloseWrite()
		errc := make(chan []byte, 1)
		go func() {
			b, _ := io.ReadAll(ch.Stderr())
			errc <- b
		}()
		stdout, err := io.ReadAll(ch)
		if err != nil {
			t.Fatal(err)
		}
		stderr := <-errc
		// EOF has been seen on both streams: exit-status must be queued.
		var status *gossh.Request
		select {
		case status = <-reqs:
		default:
			t.Fatalf("%q: EOF arrived before exit-status", tc.cmd)
		}
		if status.Type != "exit-status" {
			t.Fatalf("%q: first request %q, want exit-status", tc.cmd, status.Type)
		}
		var st struct{ Status uint32 }
		if err := gossh.Unmarshal(status.Payload, &st); err != nil || st.Status != tc.status {
			t.Errorf("%q: exit-status %d (%v), want %d", tc.cmd, st.Status, err, tc.status)
		}
		if string(stdout) != tc.stdout || string(stderr) != tc.stderr {
			t.Errorf("%q: stdout %d bytes, stderr %q; want %d bytes and %q", tc.cmd, len(stdout), truncated(stderr), len(tc.stdout), truncated([]byte(tc.stderr)))
		}
		// Then close: reqs is closed when the server's close arrives,
		// with nothing after exit-status.
		select {
		case r, more := <-reqs:
			if more {
				t.Errorf("%q: request %q after exit-status", tc.cmd, r.Type)
			}
		case <-time.After(time.Minute):
			t.Fatalf("%q: channel never closed", tc.cmd)
		}
	}
}

func truncated(b []byte) string {
	if len(b) > 40 {
		return string(b[:40]) + "…"
	}
	return string(b)
}

// TestLauncherKilled: when the launcher dies of a signal the server did
// not send, the client gets exit-signal with its name, and the session's
// processes are ended.
func TestLauncherKilled(t *testing.T) {
	s := startServer(t, serverOpt{})
	c := s.dialGo(t)
	sess, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	d := uniqueSleep()
	if err := sess.Start("sleep " + d); err != nil {
		t.Fatal(err)
	}
	launcher := s.launcherOfSleep(t, d)
	if err := syscall.Kill(launcher, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	err = sess.Wait()
	var ee *gossh.ExitError
	if !errors.As(err, &ee) || ee.Signal() != "KILL" {
		t.Errorf("session end: %v, want exit-signal KILL", err)
	}
	if !waitFor(killGrace+5*time.Second, func() bool { return len(procsWithArgs("sleep", d)) == 0 }) {
		t.Error("session processes survived the launcher's death")
	}
}

// TestSignalReachesOrphans: a client's signal reaches a process of the
// session that, after the session started, cleared its environment and
// lost its parent: only the session's cgroup still holds it (the tracker
// does not follow a session its cgroup holds whole).
func TestSignalReachesOrphans(t *testing.T) {
	s := startServer(t, serverOpt{})
	c := s.dialGo(t)
	defer c.Close()
	sess, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	out, err := sess.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	// The subshell exits at once: its child, with an empty environment,
	// is reparented. It says "armed" once its trap is set.
	orphan := `env -i /bin/sh -c 'trap "echo got; exit 0" USR1; echo armed; while :; do sleep 0.1; done'`
	if err := sess.Start("(" + orphan + " &); sleep 30"); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string)
	go func() {
		defer close(lines)
		r := bufio.NewReader(out)
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return
			}
			lines <- line
		}
	}()
	expect := func(want string) {
		t.Helper()
		select {
		case line, ok := <-lines:
			if !ok || line != want+"\n" {
				t.Fatalf("got %q (open %v), want %q", line, ok, want)
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("no %q from the orphan", want)
		}
	}
	expect("armed")
	if err := sess.Signal(gossh.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	expect("got")
}
