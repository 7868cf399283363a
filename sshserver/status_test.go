package sshserver

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pkg/sftp"
	gossh "golang.org/x/crypto/ssh"

	"github.com/darling-sshd/darling-sshd/auth"
	"github.com/darling-sshd/darling-sshd/darlingexec"
)

// serveMonitors serves a status socket in a new state directory, and
// metrics on a free loopback port, for fs; it returns the directory and
// the metrics address.
func serveMonitors(t *testing.T, fs *fakeServer) (stateDir, metricsAddr string) {
	t.Helper()
	// Short: a socket path has at most 107 bytes.
	dir, err := os.MkdirTemp("", "st")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	stateDir = filepath.Join(dir, "state")
	o := fs.opts
	o.StateDir, o.MetricsAddr = stateDir, "127.0.0.1:0"
	m, err := openMonitors(o)
	if err != nil {
		t.Fatal(err)
	}
	// The server info is set once run listens; a login proves it does.
	if !waitUntil(func() bool { return fs.info.Load() != nil }) {
		t.Fatal("the server never listened")
	}
	m.serve(fs.Server)
	t.Cleanup(m.close)
	return stateDir, m.metrics.Addr().String()
}

func query(t *testing.T, stateDir string) *Status {
	t.Helper()
	st, err := QueryStatus(context.Background(), stateDir)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// TestStatusSession: a running session shows with its command, key and
// bytes so far, and leaves the status when it ends, which the counters
// record.
func TestStatusSession(t *testing.T) {
	f := newFakeLauncher(t)
	fs := startFake(t, f, nil)
	c := fs.dial(t)
	stateDir, _ := serveMonitors(t, fs)

	ch := openSession(t, c)
	ch.exec(t, "nix-store --serve --write")
	cmd := next(t, f)
	go cmd.Out.Write([]byte("0123456789"))
	if _, err := io.ReadFull(ch, make([]byte, 10)); err != nil {
		t.Fatal(err)
	}
	if _, err := ch.Write([]byte("abc")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(cmd.inR, make([]byte, 3)); err != nil {
		t.Fatal(err)
	}

	// The pump counts a write once it returned, which may be after the
	// client read it.
	var st *Status
	if !waitUntil(func() bool {
		st = query(t, stateDir)
		return len(st.Sessions) == 1 && st.Sessions[0].BytesOut == 10
	}) {
		t.Fatalf("sessions %+v", st.Sessions)
	}
	got := st.Sessions[0]
	want := SessionInfo{User: "tester", Remote: c.LocalAddr().String(), Key: gossh.FingerprintSHA256(fs.signer.PublicKey()),
		Kind: "exec", Command: "nix-store --serve --write", Pid: 4242, BytesIn: 3, BytesOut: 10}
	if since := time.Since(got.Started); since < 0 || since > time.Minute {
		t.Errorf("started %v", got.Started)
	}
	got.Started = time.Time{}
	if got != want {
		t.Errorf("session\n got %+v\nwant %+v", got, want)
	}
	if st.Counters.Logins != 1 || st.Counters.SessionsStarted != 1 || len(st.Counters.SessionsEnded) != 0 ||
		st.Counters.BytesIn != 3 || st.Counters.BytesOut != 10 {
		t.Errorf("counters %+v", st.Counters)
	}
	srv := st.Server
	if srv.Listen != fs.addr || srv.HostKey != auth.AuthorizedKeyLine(fs.host) || srv.Launcher != "fake" ||
		srv.AuthorizedKeys != fs.opts.AuthorizedKeysPath || srv.Prefix != fs.opts.Prefix || srv.HostAlias != fs.opts.HostAlias ||
		time.Since(srv.Started) > time.Minute {
		t.Errorf("server %+v", srv)
	}
	if st.Container.Pid != 4200 || !st.Container.Since.Equal(f.since) {
		t.Errorf("container %+v, want pid 4200 since %v", st.Container, f.since)
	}

	cmd.Out.Write([]byte("!"))
	cmd.Exit(darlingexec.ExitStatus{Code: 0}, false)
	ch.finish(t)
	if !waitUntil(func() bool { return len(fs.status().Sessions) == 0 }) {
		t.Fatalf("session still listed: %+v", fs.status().Sessions)
	}
	st = query(t, stateDir)
	if n := st.Counters.SessionsEnded["status 0"]; n != 1 || st.Counters.SessionsStarted != 1 ||
		st.Counters.BytesIn != 3 || st.Counters.BytesOut != 11 {
		t.Errorf("after the end: counters %+v", st.Counters)
	}

	// A client that goes away while its command runs.
	ch = openSession(t, c)
	ch.exec(t, "sleep")
	next(t, f)
	if !waitUntil(func() bool { return len(fs.status().Sessions) == 1 }) {
		t.Fatal("second session not listed")
	}
	ch.Close()
	if !waitUntil(func() bool { return fs.status().Counters.SessionsEnded["client gone"] == 1 }) {
		t.Errorf("counters %+v", fs.status().Counters)
	}
	if n := len(fs.status().Sessions); n != 0 {
		t.Errorf("%d sessions listed after the client left", n)
	}
}

// TestStatusShellAndSFTP: a shell shows as "shell", an SFTP session as
// "sftp" without a pid, and its end is counted.
func TestStatusShellAndSFTP(t *testing.T) {
	f := newFakeLauncher(t)
	fs := startFake(t, f, nil)
	c := fs.dial(t)
	ch := openSession(t, c)
	if !ch.request(t, "shell", nil) {
		t.Fatal("shell refused")
	}
	cmd := next(t, f)
	sc, err := sftp.NewClient(c)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sc.Getwd(); err != nil {
		t.Fatal(err)
	}
	var st *Status
	if !waitUntil(func() bool { st = fs.status(); return len(st.Sessions) == 2 }) {
		t.Fatalf("sessions %+v", st.Sessions)
	}
	kinds := map[string]SessionInfo{}
	for _, s := range st.Sessions {
		kinds[s.Kind] = s
	}
	if s := kinds["shell"]; s.Command != "shell" || s.Pid != 4242 {
		t.Errorf("shell %+v", s)
	}
	if s := kinds["sftp"]; s.Command != "sftp" || s.Pid != 0 || s.User != "tester" {
		t.Errorf("sftp %+v", s)
	}
	sc.Close()
	cmd.Exit(darlingexec.ExitStatus{Code: 3}, false)
	ch.finish(t)
	if !waitUntil(func() bool {
		st = fs.status()
		return len(st.Sessions) == 0 && st.Counters.SessionsEnded["sftp ended"] == 1 && st.Counters.SessionsEnded["status 3"] == 1
	}) {
		t.Errorf("sessions %+v counters %+v", st.Sessions, st.Counters)
	}
}

// TestStatusRefusals: refused logins are counted by reason.
func TestStatusRefusals(t *testing.T) {
	f := newFakeLauncher(t)
	fs := startFake(t, f, nil)
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	stranger, _ := gossh.NewSignerFromKey(priv)
	for _, login := range []struct {
		user   string
		signer gossh.Signer
	}{{"tester", stranger}, {"intruder", fs.signer}} {
		c, err := gossh.Dial("tcp", fs.addr, &gossh.ClientConfig{
			User: login.user, Auth: []gossh.AuthMethod{gossh.PublicKeys(login.signer)},
			HostKeyCallback: gossh.FixedHostKey(fs.host), Timeout: 10 * time.Second,
		})
		if err == nil {
			c.Close()
			t.Fatalf("%s logged in", login.user)
		}
	}
	fs.dial(t)
	var got Counters
	if !waitUntil(func() bool {
		got = fs.status().Counters
		return got.Refusals[refusalNoAuth] == 2
	}) {
		t.Fatalf("refusals %v", got.Refusals)
	}
	if got.Refusals[refusalUnknownKey] != 1 || got.Refusals[refusalUserNotAllowed] != 1 || got.Logins != 1 {
		t.Errorf("counters %+v", got)
	}
}

// TestStatusSocket: the socket is private, a stale one is replaced, a
// live one is another server's, and a client without a server is told
// what to check.
func TestStatusSocket(t *testing.T) {
	dir, err := os.MkdirTemp("", "st")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	state := filepath.Join(dir, "state")
	_, err = QueryStatus(context.Background(), state)
	if err == nil || !strings.Contains(err.Error(), "no server answers on "+state+"/status.sock: is serve running with --state-dir "+state+"?") {
		t.Errorf("no server: %v", err)
	}

	// A stale socket: bound, then its server gone without removing it.
	if err := os.Mkdir(state, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(state, "status.sock")
	stale, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	stale.SetUnlinkOnClose(false)
	stale.Close()
	if _, err := QueryStatus(context.Background(), state); err == nil || !strings.Contains(err.Error(), "no server answers") {
		t.Errorf("stale socket: %v", err)
	}

	f := newFakeLauncher(t)
	fs := startFake(t, f, nil)
	fs.dial(t)
	o := fs.opts
	o.StateDir = state
	m, err := openMonitors(o)
	if err != nil {
		t.Fatalf("over a stale socket: %v", err)
	}
	m.serve(fs.Server)
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket %v, %v", fi.Mode(), err)
	}
	if _, err := openMonitors(o); err == nil || !strings.Contains(err.Error(), "another server uses "+state) {
		t.Errorf("second server: %v", err)
	}
	raw, err := QueryStatusJSON(context.Background(), state)
	var doc map[string]any
	if err != nil || json.Unmarshal(raw, &doc) != nil || doc["server"] == nil || doc["counters"] == nil {
		t.Errorf("status document %s, %v", raw, err)
	}
	m.close()
	if _, err := os.Lstat(path); !os.IsNotExist(err) {
		t.Errorf("socket left after close: %v", err)
	}

	// Opened, not served yet (the warm-up): the client gives up in time.
	m, err = openMonitors(o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := QueryStatus(ctx, state); err == nil || !strings.Contains(err.Error(), "did not answer in time") {
		t.Errorf("a server warming up: %v", err)
	}
	m.close()
	if _, err := os.Lstat(path); !os.IsNotExist(err) {
		t.Errorf("socket left after close: %v", err)
	}

	// A fresh state directory is made private.
	o.StateDir = filepath.Join(dir, "new", "state")
	m, err = openMonitors(o)
	if err != nil {
		t.Fatal(err)
	}
	m.close()
	if fi, err := os.Stat(o.StateDir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("state directory %v, %v", fi.Mode(), err)
	}

	// Not a socket: left alone.
	if err := os.WriteFile(path, []byte("mine"), 0o600); err != nil {
		t.Fatal(err)
	}
	o.StateDir = state
	if _, err := openMonitors(o); err == nil || !strings.Contains(err.Error(), "is not a socket") {
		t.Errorf("a file at the socket's path: %v", err)
	}
}

// TestStatusCommandCut: a long command is cut in the status.
func TestStatusCommandCut(t *testing.T) {
	kind, command := whatRuns(darlingexec.Request{Command: strings.Repeat("x", 5000)})
	if kind != "exec" || len(command) != maxStatusCommand+len("…") {
		t.Errorf("%s, %d bytes", kind, len(command))
	}
}
