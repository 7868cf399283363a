package sshserver

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pkg/sftp"

	"github.com/darling-sshd/darling-sshd/darlingexec"
)

// victim is the source address of the connections the tests' panics
// hit; the transfer that must go on comes from 127.0.0.1.
const victim = "127.0.0.2"

// panicAt arms s's hook: a connection from victim panics where the
// returned function last named ("" for nowhere).
func panicAt(s *fakeServer) func(where string) {
	var target atomic.Value
	target.Store("")
	hook := hookFunc(func(where, remote string) {
		if strings.HasPrefix(remote, victim+":") && target.Load() == where {
			panic("injected at " + where)
		}
	})
	s.hook.Store(&hook)
	return func(where string) { target.Store(where) }
}

// sftpFrom opens an SFTP session on a new connection from src.
func sftpFrom(t *testing.T, s *fakeServer, src string) (*sftp.Client, error) {
	t.Helper()
	c, err := s.dialFrom(src)
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { c.Close() })
	sess, err := c.NewSession()
	if err != nil {
		return nil, err
	}
	in, _ := sess.StdinPipe()
	out, _ := sess.StdoutPipe()
	if err := sess.RequestSubsystem("sftp"); err != nil {
		return nil, err
	}
	cl, err := sftp.NewClientPipe(out, in)
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { cl.Close() })
	return cl, nil
}

// rawFrom opens a TCP connection to s from src.
func rawFrom(t *testing.T, s *fakeServer, src string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 10 * time.Second}
	nc, err := d.Dial("tcp", s.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	return nc
}

// closedByServer waits until the server closes nc.
func closedByServer(nc net.Conn) bool {
	nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err := io.Copy(io.Discard, nc)
	var ne net.Error
	return !errors.As(err, &ne) || !ne.Timeout()
}

// TestPanicsEndOneConnection injects a panic into each kind of function a
// library calls: gliderlabs' callbacks (connection, server config, public
// key, connection failed, channel handler), x/crypto's (verified key,
// authentication log, its reads of the connection: the identification
// check), timers (login grace, keepalive, close), every
// handler and file method pkg/sftp's workers call, and pkg/sftp's reading
// and sending. Each panic is logged and ends that connection or fails
// that request; an SFTP upload on another connection runs throughout and
// arrives byte for byte, and the server still logs in and runs commands.
// On the code before recover.go the first panic ended the test binary.
func TestPanicsEndOneConnection(t *testing.T) {
	f := newFakeLauncher(t)
	s := startFake(t, f, func(o *Options) {
		o.LoginGraceTime = time.Second
		o.KeepaliveInterval = 50 * time.Millisecond
	})
	arm := panicAt(s)
	os.WriteFile(filepath.Join(f.dir, "file"), []byte("content"), 0o644)
	os.Symlink("file", filepath.Join(f.dir, "link"))

	// The transfer that must go on: 32 KiB writes until stopped.
	a, err := sftpFrom(t, s, "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	up, err := a.Create("/upload")
	if err != nil {
		t.Fatal(err)
	}
	stop, uploaded := make(chan struct{}), make(chan []byte, 1)
	go func() {
		var sent bytes.Buffer
		r := rand.NewChaCha8([32]byte{1})
		buf := make([]byte, 32<<10)
		for {
			select {
			case <-stop:
				if err := up.Close(); err != nil {
					t.Errorf("close the upload: %v", err)
				}
				uploaded <- sent.Bytes()
				return
			default:
			}
			r.Read(buf)
			if _, err := up.Write(buf); err != nil {
				t.Errorf("upload: %v", err)
				uploaded <- nil
				return
			}
			sent.Write(buf)
		}
	}()

	recovered := func() int { return strings.Count(s.log.String(), "panic recovered; the server goes on") }
	loginFails := func(t *testing.T) {
		if c, err := s.dialFrom(victim); err == nil {
			c.Close()
			t.Error("logged in")
		}
	}
	sftpFails := func(op func(*sftp.Client) error) func(t *testing.T) {
		return func(t *testing.T) {
			cl, err := sftpFrom(t, s, victim)
			if err != nil {
				t.Fatal(err)
			}
			if err := op(cl); err == nil {
				t.Error("the request succeeded")
			}
			// The session goes on.
			arm("")
			if _, err := cl.Stat("/file"); err != nil {
				t.Errorf("after the panic: %v", err)
			}
		}
	}
	sftpLogs := func(op func(*sftp.Client) error) func(t *testing.T) {
		return func(t *testing.T) {
			cl, err := sftpFrom(t, s, victim)
			if err != nil {
				t.Fatal(err)
			}
			op(cl)
		}
	}
	sftpEnds := func(t *testing.T) {
		if _, err := sftpFrom(t, s, victim); err == nil {
			t.Error("sftp started")
		}
	}
	cases := []struct {
		where string
		run   func(t *testing.T)
	}{
		{"conn", loginFails},
		{"config", loginFails},
		{"publickey", loginFails},
		{"verified", loginFails},
		{"authlog", loginFails},
		{"failed", func(t *testing.T) { rawFrom(t, s, victim).Close() }},
		{"banner", loginFails},
		{"logingrace", func(t *testing.T) {
			if !closedByServer(rawFrom(t, s, victim)) {
				t.Error("the connection outlived its login grace time")
			}
		}},
		{"channel", func(t *testing.T) {
			c, err := s.dialFrom(victim)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if sess, err := c.NewSession(); err == nil {
				sess.Close()
				t.Error("session opened")
			}
		}},
		{"keepalive", func(t *testing.T) {
			c, err := s.dialFrom(victim)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			ch := openSession(t, c)
			ch.exec(t, "work")
			cmd := next(t, f)
			waitErr := make(chan error, 1)
			go func() { waitErr <- c.Wait() }()
			select {
			case <-waitErr:
			case <-time.After(10 * time.Second):
				t.Error("the connection was not closed")
			}
			if !waitUntil(cmd.ended.Load) {
				t.Error("the session's command was not ended")
			}
		}},
		{"closed", func(t *testing.T) {
			c, err := s.dialFrom(victim)
			if err != nil {
				t.Fatal(err)
			}
			c.Close()
		}},
		{"sftp.Fileread", sftpFails(func(c *sftp.Client) error { _, err := c.Open("/file"); return err })},
		{"sftp.Filewrite", sftpFails(func(c *sftp.Client) error { _, err := c.OpenFile("/w", os.O_WRONLY|os.O_CREATE); return err })},
		{"sftp.OpenFile", sftpFails(func(c *sftp.Client) error { _, err := c.OpenFile("/rw", os.O_RDWR|os.O_CREATE); return err })},
		{"sftp.Filecmd", sftpFails(func(c *sftp.Client) error { return c.Mkdir("/d") })},
		{"sftp.PosixRename", sftpFails(func(c *sftp.Client) error { return c.PosixRename("/nothing", "/else") })},
		{"sftp.Filelist", sftpFails(func(c *sftp.Client) error { _, err := c.ReadDir("/"); return err })},
		{"sftp.ListAt", sftpFails(func(c *sftp.Client) error { _, err := c.ReadDir("/"); return err })},
		{"sftp.Lstat", sftpFails(func(c *sftp.Client) error { _, err := c.Lstat("/file"); return err })},
		{"sftp.Readlink", sftpFails(func(c *sftp.Client) error { _, err := c.ReadLink("/link"); return err })},
		{"sftp.ReadAt", sftpFails(func(c *sftp.Client) error {
			r, err := c.Open("/file")
			if err != nil {
				return nil
			}
			_, err = io.ReadAll(r)
			return err
		})},
		{"sftp.WriteAt", sftpFails(func(c *sftp.Client) error {
			w, err := c.Create("/written")
			if err != nil {
				return nil
			}
			_, err = w.Write([]byte("x"))
			return err
		})},
		{"sftp.Close", sftpFails(func(c *sftp.Client) error {
			w, err := c.Create("/closed")
			if err != nil {
				return nil
			}
			return w.Close()
		})},
		{"sftp.LookupUserName", sftpLogs(func(c *sftp.Client) error { _, err := c.ReadDir("/"); return err })},
		{"sftp.LookupGroupName", sftpLogs(func(c *sftp.Client) error { _, err := c.ReadDir("/"); return err })},
		{"sftp.read", sftpEnds},
		{"sftp.send", sftpEnds},
	}
	for _, c := range cases {
		t.Run(c.where, func(t *testing.T) {
			before := recovered()
			arm(c.where)
			defer arm("")
			c.run(t)
			if !waitUntil(func() bool { return recovered() > before }) {
				t.Errorf("no panic recovered at %s", c.where)
			}
		})
	}
	arm("")

	close(stop)
	sent := <-uploaded
	got, err := os.ReadFile(filepath.Join(f.dir, "upload"))
	if err != nil || len(sent) == 0 || !bytes.Equal(got, sent) {
		t.Errorf("the upload on the other connection: %d bytes arrived, %d sent: %v", len(got), len(sent), err)
	}
	// The server goes on.
	ch := openSession(t, s.dial(t))
	ch.exec(t, "after")
	next(t, f).Exit(darlingexec.ExitStatus{Code: 3}, false)
	if e := ch.finish(t); e.status != 3 {
		t.Errorf("a session after the panics: %+v", e)
	}
}
