package sshserver

import (
	"bufio"
	"errors"
	"io"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestIdentificationLikeOpenSSH: a client whose first line is not an SSH
// 2.0 identification string gets what OpenSSH's sshd sends (its own
// version line, then the reason, CR LF) and the connection is closed at
// once, long before the login grace time; SSH-2.0 and SSH-1.99 go on to
// the key exchange. Before version.go, SSH-1.5 got the server's KEXINIT
// and every bad line got silence until the login grace time.
func TestIdentificationLikeOpenSSH(t *testing.T) {
	s := startFake(t, newFakeLauncher(t), func(o *Options) { o.LoginGraceTime = 5 * time.Minute })
	for _, c := range []struct {
		send, answer string // answer: after the server's version line; "" for the key exchange
	}{
		{"SSH-1.5-foo\r\n", "Protocol major versions differ.\r\n"},
		{"SSH-1.0-foo\r\n", "Protocol major versions differ.\r\n"},
		{"SSH-3.0-foo\r\n", "Protocol major versions differ.\r\n"},
		{"SSH-12345678901234567890.0-foo\r\n", "Protocol major versions differ.\r\n"},
		{"hello\r\n", "Invalid SSH identification string.\r\n"},
		{"GET / HTTP/1.0\r\n\r\n", "Invalid SSH identification string.\r\n"},
		{"\r\n", "Invalid SSH identification string.\r\n"},
		{"SSH-\r\n", "Invalid SSH identification string.\r\n"},
		{"SSH-2.0-\r\n", "Invalid SSH identification string.\r\n"},
		{"SSH-2.0\r\n", "Invalid SSH identification string.\r\n"},
		{"SSH-2-foo\r\n", "Invalid SSH identification string.\r\n"},
		{"SSH-x.0-foo\r\n", "Invalid SSH identification string.\r\n"},
		{"SSH-2.0-x\rY\n", "Invalid SSH identification string.\r\n"},
		{"SSH-2.0-a\x00b\r\n", "Invalid SSH identification string.\r\n"},
		{strings.Repeat("x", maxIdentLine+1), "Invalid SSH identification string.\r\n"},
		{"SSH-2.0-OpenSSH_9.2\r\n", ""},
		{"SSH-2.0-plain-newline\n", ""},
		{"SSH-1.99-compat\r\n", ""},
		{"SSH- 2.0-spaces, as sscanf reads them\r\n", ""},
	} {
		nc, err := net.Dial("tcp", s.addr)
		if err != nil {
			t.Fatal(err)
		}
		nc.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.WriteString(nc, c.send); err != nil {
			t.Fatal(err)
		}
		r := bufio.NewReader(nc)
		version, err := r.ReadString('\n')
		if version != "SSH-2.0-darling-sshd\r\n" {
			t.Errorf("%q: version line %q: %v", c.send, version, err)
		}
		if c.answer == "" {
			// The key exchange: a binary packet, and the connection stays.
			head := make([]byte, 6)
			if _, err := io.ReadFull(r, head); err != nil || head[5] != 20 {
				t.Errorf("%q: no KEXINIT: %x %v", c.send, head, err)
			}
		} else {
			// Closed with bytes of the client's still unread, the socket
			// resets, as sshd's does.
			rest, err := io.ReadAll(r)
			if string(rest) != c.answer || (err != nil && !errors.Is(err, syscall.ECONNRESET)) {
				t.Errorf("%q: got %q (%v), want %q and the connection closed", c.send, rest, err, c.answer)
			}
		}
		nc.Close()
	}
	// The refused connections left the unauthenticated count.
	if !waitUntil(func() bool { return s.unauthed.Load() == 0 }) {
		t.Errorf("%d connections still count as unauthenticated", s.unauthed.Load())
	}
	// A real client still logs in.
	s.dial(t).Close()
}
