package integration

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// startOpenSSHD starts Debian's sshd on a free loopback port with a
// configuration of its own, and returns its address.
func startOpenSSHD(t *testing.T) string {
	t.Helper()
	if _, err := os.Stat("/usr/sbin/sshd"); err != nil {
		t.Skipf("sshd is needed (make test installs openssh-server): %v", err)
	}
	dir := t.TempDir()
	hk := newKey(t, dir, "hostkey")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	_, port, _ := net.SplitHostPort(addr)
	os.MkdirAll("/run/sshd", 0o755) // its privilege separation folder
	cfg := fmt.Sprintf("Port %s\nListenAddress 127.0.0.1\nHostKey %s\nPidFile %s/sshd.pid\nUsePAM no\n", port, hk, dir)
	os.WriteFile(filepath.Join(dir, "sshd_config"), []byte(cfg), 0o600)
	cmd := exec.Command("/usr/sbin/sshd", "-D", "-e", "-f", filepath.Join(dir, "sshd_config"))
	var log syncBuffer
	cmd.Stderr = &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	if !waitFor(10*time.Second, func() bool { return strings.Contains(log.String(), "Server listening") }) {
		t.Fatalf("sshd did not start:\n%s", log.String())
	}
	return addr
}

// identAnswer sends line as a client's first line and returns what the
// server sent after its own version line, up to the first 40 bytes, and
// whether it closed the connection within 10 s.
func identAnswer(t *testing.T, addr, line string) (string, bool) {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(nc, line)
	r := bufio.NewReader(nc)
	if v, err := r.ReadString('\n'); !strings.HasPrefix(v, "SSH-2.0-") {
		t.Fatalf("%s: version line %q: %v", addr, v, err)
	}
	rest, err := io.ReadAll(io.LimitReader(r, 40))
	if len(rest) == 40 {
		return "binary: a key exchange", false
	}
	var ne net.Error
	closed := err == nil || errors.Is(err, syscall.ECONNRESET) || !(errors.As(err, &ne) && ne.Timeout())
	return string(rest), closed
}

// TestIdentificationLikeSSHD: for each kind of first line, the server
// sends after its version line what Debian's sshd sends, and closes at
// once where sshd closes (the server's login grace time is 2 minutes).
// Before, an SSH-1 client got a key exchange and a line that is no SSH
// identification got silence until the login grace time.
func TestIdentificationLikeSSHD(t *testing.T) {
	sshd := startOpenSSHD(t)
	s := startServer(t, serverOpt{args: []string{"--login-grace-time", "2m"}})
	for _, line := range []string{
		"SSH-1.5-foo\r\n",
		"SSH-1.0-old\r\n",
		"SSH-3.0-future\r\n",
		"hello\r\n",
		"GET / HTTP/1.0\r\n\r\n",
		"\r\n",
		"SSH-2.0-\r\n",
		"SSH-2-foo\r\n",
		"SSH-2.0-x\rY\n",
		"SSH-2.0-a\x00b\r\n",
		strings.Repeat("x", 9000),
		"SSH-2.0-OpenSSH_9.2\r\n",
		"SSH-1.99-compat\r\n",
	} {
		want, wantClosed := identAnswer(t, sshd, line)
		got, closed := identAnswer(t, s.addr, line)
		if got != want || closed != wantClosed {
			t.Errorf("%.30q: got %q (closed %v), sshd sends %q (closed %v)", line, got, closed, want, wantClosed)
		}
	}
}
