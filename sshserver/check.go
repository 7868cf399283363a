package sshserver

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"time"

	gossh "golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// Nix's serve protocol (legacy ssh:// store): the client sends magic 1 and
// its version, the server answers magic 2 and its version.
const (
	serveMagic1     = 0x390c9deb
	serveMagic2     = 0x5452eecb
	serveVersion    = 0x206
	defaultCheckCmd = "nix-store --serve --write"
)

// CheckOptions is what `darling-sshd check` connects with.
type CheckOptions struct {
	Addr       string // host:port
	User       string
	Identity   string // private key file
	KnownHosts string // known_hosts file pinning the host key
	Command    string // remote command; nix-store --serve --write if empty
	Timeout    time.Duration
	Out        io.Writer // one line per step
}

// errCheckFailed is returned once a step failed; the step printed why.
var errCheckFailed = errors.New("check failed")

// Check connects as Nix's ssh:// store would, with the host key pinned,
// and runs the nix-store --serve handshake inside the prefix. It prints a
// line per step (tcp, host key, auth, command, handshake) and stops at the
// first that fails.
func Check(ctx context.Context, o CheckOptions) error {
	if o.Command == "" {
		o.Command = defaultCheckCmd
	}
	ctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	ok := func(step, detail string) { fmt.Fprintf(o.Out, "ok    %-9s %s\n", step, detail) }
	fail := func(step string, err error) error {
		fmt.Fprintf(o.Out, "FAIL  %-9s %v\n", step, err)
		return errCheckFailed
	}

	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", o.Addr)
	if err != nil {
		return fail("tcp", err)
	}
	defer conn.Close()
	ok("tcp", o.Addr)
	if dl, has := ctx.Deadline(); has {
		conn.SetDeadline(dl)
	}

	hostKeyCB, err := knownhosts.New(o.KnownHosts)
	if err != nil {
		return fail("host key", fmt.Errorf("known hosts %s: %w", o.KnownHosts, err))
	}
	keyPEM, err := os.ReadFile(o.Identity)
	if err != nil {
		return fail("auth", fmt.Errorf("identity: %w", err))
	}
	signer, err := gossh.ParsePrivateKey(keyPEM)
	if err != nil {
		return fail("auth", fmt.Errorf("identity %s: %w", o.Identity, err))
	}
	var hostKeyErr error
	var hostKey gossh.PublicKey
	cfg := &gossh.ClientConfig{
		User: o.User,
		Auth: []gossh.AuthMethod{gossh.PublicKeys(signer)},
		HostKeyCallback: func(host string, remote net.Addr, key gossh.PublicKey) error {
			hostKey = key
			hostKeyErr = hostKeyCB(host, remote, key)
			return hostKeyErr
		},
	}
	c, chans, reqs, err := gossh.NewClientConn(conn, o.Addr, cfg)
	switch {
	case hostKey == nil && err != nil:
		return fail("host key", fmt.Errorf("ssh handshake: %w", err))
	case hostKeyErr != nil:
		return fail("host key", fmt.Errorf("%s %s not trusted by %s: %w", hostKey.Type(), gossh.FingerprintSHA256(hostKey), o.KnownHosts, hostKeyErr))
	}
	ok("host key", hostKey.Type()+" "+gossh.FingerprintSHA256(hostKey))
	if err != nil {
		return fail("auth", fmt.Errorf("as %s with %s: %w", o.User, o.Identity, err))
	}
	client := gossh.NewClient(c, chans, reqs)
	defer client.Close()
	ok("auth", o.User+" with "+o.Identity+" ("+gossh.FingerprintSHA256(signer.PublicKey())+")")

	sess, err := client.NewSession()
	if err != nil {
		return fail("command", err)
	}
	defer sess.Close()
	var stderr bytes.Buffer
	sess.Stderr = &stderr
	stdin, err1 := sess.StdinPipe()
	stdout, err2 := sess.StdoutPipe()
	if err := errors.Join(err1, err2); err != nil {
		return fail("command", err)
	}
	if err := sess.Start(o.Command); err != nil {
		return fail("command", fmt.Errorf("%s: %w", o.Command, err))
	}
	ok("command", o.Command)

	var hello [16]byte
	binary.LittleEndian.PutUint64(hello[:8], serveMagic1)
	binary.LittleEndian.PutUint64(hello[8:], serveVersion)
	if _, err := stdin.Write(hello[:]); err != nil {
		return fail("handshake", err)
	}
	var reply [16]byte
	if _, err := io.ReadFull(stdout, reply[:]); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if msg == "" {
			msg = "no answer"
		}
		return fail("handshake", fmt.Errorf("%w: %s", err, msg))
	}
	magic := binary.LittleEndian.Uint64(reply[:8])
	version := binary.LittleEndian.Uint64(reply[8:])
	if magic != serveMagic2 {
		return fail("handshake", fmt.Errorf("protocol mismatch: got magic %#x, want %#x (stray output on stdout?)", magic, serveMagic2))
	}
	ok("handshake", fmt.Sprintf("nix-store --serve protocol %d.%d", version>>8&0xff, version&0xff))
	stdin.Close()
	return nil
}
