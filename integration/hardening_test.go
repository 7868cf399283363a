package integration

import (
	"bufio"
	"context"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"
)

// TestSSHAudit: Debian's ssh-audit finds nothing to fail or warn about but
// algorithms newer than it.
func TestSSHAudit(t *testing.T) {
	if _, err := exec.LookPath("ssh-audit"); err != nil {
		t.Fatal("ssh-audit not found: make test installs it")
	}
	s := startServer(t, serverOpt{})
	// ssh-audit exits non-zero whenever it warns, even about unknown
	// algorithms: the lines are what count.
	out, _ := exec.Command("ssh-audit", "-n", "-l", "warn", "-p", s.port, "127.0.0.1").CombinedOutput()
	if !strings.Contains(string(out), "key exchange algorithms") && !strings.Contains(string(out), "[warn]") {
		t.Fatalf("ssh-audit printed nothing useful:\n%s", out)
	}
	for _, l := range strings.Split(string(out), "\n") {
		if strings.Contains(l, "[fail]") {
			t.Errorf("ssh-audit: %s", l)
		}
		if strings.Contains(l, "[warn]") {
			known := strings.Contains(l, "unknown algorithm") &&
				(strings.Contains(l, "mlkem768x25519-sha256") || strings.Contains(l, "kex-strict-s-v00@openssh.com"))
			if !known {
				t.Errorf("ssh-audit: %s", l)
			}
		}
	}
}

// TestMaxSessions: sessions beyond --max-sessions on one connection are
// refused; others on it go on.
func TestMaxSessions(t *testing.T) {
	s := startServer(t, serverOpt{args: []string{"--max-sessions", "2"}})
	c := s.dialGo(t)
	var open []*gossh.Session
	for i := range 3 {
		sess, err := c.NewSession()
		if i < 2 && err != nil {
			t.Fatalf("session %d: %v", i, err)
		}
		if i == 2 {
			if err == nil {
				t.Fatal("a third session was accepted with --max-sessions 2")
			}
			break
		}
		open = append(open, sess)
	}
	open[0].Close()
	// Closing one frees its place.
	if !waitFor(10*time.Second, func() bool {
		sess, err := c.NewSession()
		if err == nil {
			sess.Close()
		}
		return err == nil
	}) {
		t.Error("a place freed by a closed session was not reused")
	}
	open[1].Close()
}

// TestMaxExec: exec sessions beyond --max-exec wait their turn.
func TestMaxExec(t *testing.T) {
	s := startServer(t, serverOpt{args: []string{"--max-exec", "1"}})
	d := uniqueSleep()
	first := s.ssh(context.Background(), "dut", "while [ ! -e /private/tmp/release-"+d+" ]; do sleep 0.05; done; echo first")
	var firstOut strings.Builder
	first.Stdout = &firstOut
	if err := first.Start(); err != nil {
		t.Fatal(err)
	}
	if !s.logged("exec started") {
		t.Fatal("first session never started")
	}
	second := s.ssh(context.Background(), "dut", "echo second")
	var secondOut strings.Builder
	second.Stdout = &secondOut
	if err := second.Start(); err != nil {
		t.Fatal(err)
	}
	if !s.logged("exec session queued") {
		t.Fatal("second session not queued")
	}
	if n := strings.Count(s.log.String(), "exec started"); n != 1 {
		t.Errorf("%d exec sessions started with --max-exec 1", n)
	}
	os.WriteFile(s.inPrefix("private/tmp/release-"+d), nil, 0o644)
	first.Wait()
	second.Wait()
	if firstOut.String() != "first\n" || secondOut.String() != "second\n" {
		t.Errorf("outputs %q %q", firstOut.String(), secondOut.String())
	}
}

// TestMaxStartups: unauthenticated connections beyond full are dropped.
func TestMaxStartups(t *testing.T) {
	s := startServer(t, serverOpt{args: []string{"--max-startups", "2"}})
	var idle []net.Conn
	for range 2 {
		c, err := net.Dial("tcp", s.addr)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := bufio.NewReader(c).ReadString('\n'); err != nil {
			t.Fatal(err)
		}
		idle = append(idle, c)
	}
	c, err := net.Dial("tcp", s.addr)
	if err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(time.Minute))
	if line, err := bufio.NewReader(c).ReadString('\n'); err == nil {
		t.Errorf("a third unauthenticated connection got a banner: %q", line)
	}
	c.Close()
	for _, c := range idle {
		c.Close()
	}
	if !waitFor(30*time.Second, func() bool { return s.exec("true", "").code == 0 }) {
		t.Error("logins do not work again once the unauthenticated connections left")
	}
}

// TestMaxAuthTries: a client offering more keys than allowed is cut off.
func TestMaxAuthTries(t *testing.T) {
	s := startServer(t, serverOpt{args: []string{"--max-auth-tries", "2"}})
	args := []string{"-F", "/dev/null", "-p", s.port, "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
		"-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"}
	for i := range 4 {
		args = append(args, "-i", newKey(t, s.dir, "wrong"+string(rune('a'+i))))
	}
	out, err := exec.Command("ssh", append(args, "root@127.0.0.1", "true")...).CombinedOutput()
	if err == nil || !strings.Contains(strings.ToLower(string(out)), "too many authentication failures") {
		t.Errorf("4 wrong keys with --max-auth-tries 2: %v %s", err, out)
	}
}

// freezingConn stops delivering what the server sends once frozen, as a
// client that vanished without closing.
type freezingConn struct {
	net.Conn
	mu     sync.Mutex
	frozen bool
	block  chan struct{}
}

func (c *freezingConn) Read(p []byte) (int, error) {
	c.mu.Lock()
	frozen := c.frozen
	c.mu.Unlock()
	if frozen {
		<-c.block
		return 0, net.ErrClosed
	}
	return c.Conn.Read(p)
}

// TestKeepalives: a client that stops answering is dropped after the
// keepalives go unanswered; a silent but answering one is not.
func TestKeepalives(t *testing.T) {
	s := startServer(t, serverOpt{args: []string{"--keepalive-interval", "200ms", "--keepalive-count-max", "2"}})
	if r := s.exec("sleep 2; echo alive", ""); r.stdout != "alive\n" {
		t.Errorf("a silent session was cut off: %+v", r)
	}
	keyPEM, _ := os.ReadFile(s.clientKey)
	signer, err := gossh.ParsePrivateKey(keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := net.Dial("tcp", s.addr)
	if err != nil {
		t.Fatal(err)
	}
	fc := &freezingConn{Conn: raw, block: make(chan struct{})}
	defer close(fc.block)
	cc, chans, reqs, err := gossh.NewClientConn(fc, s.addr, &gossh.ClientConfig{
		User: "root", Auth: []gossh.AuthMethod{gossh.PublicKeys(signer)},
		HostKeyCallback: gossh.InsecureIgnoreHostKey(),
	})
	if err != nil {
		t.Fatal(err)
	}
	client := gossh.NewClient(cc, chans, reqs)
	sess, err := client.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	d := uniqueSleep()
	if err := sess.Start("sleep " + d); err != nil {
		t.Fatal(err)
	}
	if !waitFor(time.Minute, func() bool { return len(procsWithArgs("sleep", d)) == 1 }) {
		t.Fatal("sleep never started")
	}
	fc.mu.Lock()
	fc.frozen = true
	fc.mu.Unlock()
	if !s.logged("no answer to keepalives") {
		t.Fatal("a client that stopped answering was not dropped")
	}
	if !waitFor(killGrace+5*time.Second, func() bool { return len(procsWithArgs("sleep", d)) == 0 }) {
		t.Error("the dropped client's session processes survived")
	}
}
