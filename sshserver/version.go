package sshserver

import (
	"errors"
	"io"
	"log/slog"
	"net"
	"strconv"
	"unicode"
)

// The client's identification string, checked as OpenSSH's sshd checks
// it (kex.c, kex_exchange_identification), before x/crypto reads it.
//
// x/crypto skips lines that do not start with "SSH-" (RFC 4253 lets a
// server send lines before its own; a client may not) and takes any
// "SSH-" line, so a client speaking SSH-1, or no SSH at all, got the
// server's KEXINIT and then silence until the login grace time, holding
// an unauthenticated slot. sshd answers, after its own version line, with
// one of two lines and closes: "Protocol major versions differ." for a
// version other than 2.0 or 1.99, "Invalid SSH identification string."
// for anything else it cannot read. Checked on 127.0.0.1 against Debian's
// OpenSSH 9.2p1 sshd: "SSH-1.5-foo\r\n" gets "SSH-2.0-OpenSSH_9.2p1
// Debian-2+deb12u10\r\nProtocol major versions differ.\r\n", and
// "hello\r\n", "SSH-2.0-\r\n", "GET / HTTP/1.0\r\n" and "SSH-2.0-x\rY\n"
// get "…\r\nInvalid SSH identification string.\r\n".
//
// A wrapper on the connection, not a patch to x/crypto: x/crypto writes
// its version line before it reads the client's, so by the first read
// the server has spoken first, as sshd does; the check reads the line a
// byte at a time, as sshd and x/crypto do, so nothing behind it is read
// early, then hands it to x/crypto unchanged. No patch to carry across
// x/crypto upgrades, and the check is the server's policy, next to its
// other admission rules.

const (
	// maxIdentLine is sshd's SSH_MAX_BANNER_LEN.
	maxIdentLine = 8192
	identInvalid = "Invalid SSH identification string."
	identVersion = "Protocol major versions differ."
)

// identConn is a client connection whose first line is checked before
// x/crypto reads it.
type identConn struct {
	net.Conn
	r    io.Reader // reads the connection after the line (newRawReader)
	log  *slog.Logger
	hook func(where string)
	// Only the goroutine reading the connection uses these: x/crypto's
	// handshake, then its read loop, which the handshake starts.
	checked bool
	line    []byte // the client's line as it came, not yet read by x/crypto
}

// errIdent is what x/crypto gets for a line the server refused.
var errIdent = errors.New("ssh: invalid identification string")

func (c *identConn) Read(p []byte) (n int, err error) {
	defer contain(c.log, "identification check", func() {
		n, err = 0, errIdent
		c.Conn.Close()
	})
	if !c.checked {
		c.hook("banner")
		if err := c.check(); err != nil {
			return 0, err
		}
		c.checked = true
	}
	if len(c.line) > 0 {
		n = copy(p, c.line)
		c.line = c.line[n:]
		return n, nil
	}
	return c.r.Read(p)
}

// check reads the client's identification line and answers a bad one as
// sshd does: the reason on a line of its own, then the connection closes.
func (c *identConn) check() error {
	var b [1]byte
	expectNL := false
	var text []byte // the line without its CR LF
	for {
		if _, err := io.ReadFull(c.Conn, b[:]); err != nil {
			return err
		}
		c.line = append(c.line, b[0])
		if b[0] == '\r' {
			expectNL = true
			continue
		}
		if b[0] == '\n' {
			break
		}
		if b[0] == 0 || expectNL {
			return c.refuse(identInvalid, "the line holds a NUL or a CR before its end", text)
		}
		text = append(text, b[0])
		if len(text) > maxIdentLine {
			return c.refuse(identInvalid, "the line is too long", text)
		}
	}
	if len(text) <= 4 || string(text[:4]) != "SSH-" {
		return c.refuse(identInvalid, "not an SSH identification string", text)
	}
	major, minor, ok := parseIdent(text)
	switch {
	case !ok:
		return c.refuse(identInvalid, "not an SSH identification string", text)
	case major == 2, major == 1 && minor == 99:
		return nil
	}
	return c.refuse(identVersion, "protocol major versions differ: 2 vs. "+strconv.Itoa(major), text)
}

// refuse sends msg on a line and closes the connection.
func (c *identConn) refuse(msg, why string, line []byte) error {
	c.log.Info("connection closed", "reason", why, "identification", truncate(string(line), 100))
	_, _ = c.Conn.Write([]byte(msg + "\r\n"))
	c.Conn.Close()
	return errIdent
}

// parseIdent reads "SSH-%d.%d-%[^\n]" as sshd's sscanf does: each number
// after optional white space and sign, then at least one character of
// software version.
func parseIdent(line []byte) (major, minor int, ok bool) {
	s := line[4:]
	if major, s, ok = scanInt(s); !ok || len(s) == 0 || s[0] != '.' {
		return 0, 0, false
	}
	if minor, s, ok = scanInt(s[1:]); !ok || len(s) < 2 || s[0] != '-' {
		return 0, 0, false
	}
	return major, minor, true
}

// scanInt reads an int as scanf's %d does.
func scanInt(s []byte) (int, []byte, bool) {
	for len(s) > 0 && unicode.IsSpace(rune(s[0])) {
		s = s[1:]
	}
	i := 0
	if i < len(s) && (s[i] == '+' || s[i] == '-') {
		i++
	}
	start := i
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		i++
	}
	if i == start {
		return 0, s, false
	}
	n, err := strconv.Atoi(string(s[:i]))
	if err != nil {
		n = -1 // out of range: no version this server speaks
	}
	return n, s[i:], true
}
