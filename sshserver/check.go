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
	r := checkReport{out: o.Out}

	conn, err := r.dial(ctx, o.Addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	client, err := r.login(conn, o)
	if err != nil {
		return err
	}
	defer client.Close()

	sess, err := client.NewSession()
	if err != nil {
		return r.fail("command", err)
	}
	defer sess.Close()
	var stderr bytes.Buffer
	stdin, stdout, err := r.start(sess, o.Command, &stderr)
	if err != nil {
		return err
	}
	if err := r.handshake(stdin, stdout, &stderr); err != nil {
		return err
	}
	stdin.Close()
	return nil
}

// checkReport prints Check's steps, one line each.
type checkReport struct{ out io.Writer }

func (r checkReport) ok(step, detail string) {
	fmt.Fprintf(r.out, "ok    %-9s %s\n", step, detail)
}

// fail prints why step failed and returns errCheckFailed: the line is the
// report, the error only says that there was one.
func (r checkReport) fail(step string, err error) error {
	fmt.Fprintf(r.out, "FAIL  %-9s %v\n", step, err)
	return errCheckFailed
}

// dial opens the TCP connection, bounded by ctx's deadline for the whole
// check, not only for the connect.
func (r checkReport) dial(ctx context.Context, addr string) (net.Conn, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, r.fail("tcp", err)
	}
	r.ok("tcp", addr)
	if dl, has := ctx.Deadline(); has {
		conn.SetDeadline(dl)
	}
	return conn, nil
}

// login runs the SSH handshake over conn: the host key pinned by
// o.KnownHosts, then public key authentication with o.Identity. A failed
// handshake is reported under host key until the key has been seen (or
// when it is not trusted), and under auth after.
func (r checkReport) login(conn net.Conn, o CheckOptions) (*gossh.Client, error) {
	hostKeyCB, err := knownhosts.New(o.KnownHosts)
	if err != nil {
		return nil, r.fail("host key", fmt.Errorf("known hosts %s: %w", o.KnownHosts, err))
	}
	signer, err := r.identity(o.Identity)
	if err != nil {
		return nil, err
	}
	hk := &seenHostKey{check: hostKeyCB}
	cfg := &gossh.ClientConfig{
		User:            o.User,
		Auth:            []gossh.AuthMethod{gossh.PublicKeys(signer)},
		HostKeyCallback: hk.callback,
	}
	c, chans, reqs, err := gossh.NewClientConn(conn, o.Addr, cfg)
	switch {
	case hk.key == nil && err != nil:
		return nil, r.fail("host key", fmt.Errorf("ssh handshake: %w", err))
	case hk.err != nil:
		return nil, r.fail("host key", fmt.Errorf("%s %s not trusted by %s: %w", hk.key.Type(), gossh.FingerprintSHA256(hk.key), o.KnownHosts, hk.err))
	}
	r.ok("host key", hk.key.Type()+" "+gossh.FingerprintSHA256(hk.key))
	if err != nil {
		return nil, r.fail("auth", fmt.Errorf("as %s with %s: %w", o.User, o.Identity, err))
	}
	client := gossh.NewClient(c, chans, reqs)
	r.ok("auth", o.User+" with "+o.Identity+" ("+gossh.FingerprintSHA256(signer.PublicKey())+")")
	return client, nil
}

// identity reads the private key to authenticate with.
func (r checkReport) identity(path string) (gossh.Signer, error) {
	keyPEM, err := os.ReadFile(path)
	if err != nil {
		return nil, r.fail("auth", fmt.Errorf("identity: %w", err))
	}
	signer, err := gossh.ParsePrivateKey(keyPEM)
	if err != nil {
		return nil, r.fail("auth", fmt.Errorf("identity %s: %w", path, err))
	}
	return signer, nil
}

// seenHostKey keeps the host key the server offered and the known_hosts
// verdict on it: the handshake's error alone cannot tell an untrusted
// host key from a failure before or after the key was checked.
type seenHostKey struct {
	check gossh.HostKeyCallback
	key   gossh.PublicKey
	err   error
}

func (h *seenHostKey) callback(host string, remote net.Addr, key gossh.PublicKey) error {
	h.key = key
	h.err = h.check(host, remote, key)
	return h.err
}

// start runs command in sess with its stderr collected in stderr, and
// returns its stdin and stdout.
func (r checkReport) start(sess *gossh.Session, command string, stderr *bytes.Buffer) (io.WriteCloser, io.Reader, error) {
	sess.Stderr = stderr
	stdin, err1 := sess.StdinPipe()
	stdout, err2 := sess.StdoutPipe()
	if err := errors.Join(err1, err2); err != nil {
		return nil, nil, r.fail("command", err)
	}
	if err := sess.Start(command); err != nil {
		return nil, nil, r.fail("command", fmt.Errorf("%s: %w", command, err))
	}
	r.ok("command", command)
	return stdin, stdout, nil
}

// handshake sends the client's hello of the serve protocol and checks
// the server's. When no answer comes, what the command wrote on stderr
// is the likeliest explanation, so it goes into the report.
func (r checkReport) handshake(stdin io.Writer, stdout io.Reader, stderr *bytes.Buffer) error {
	var hello [16]byte
	binary.LittleEndian.PutUint64(hello[:8], serveMagic1)
	binary.LittleEndian.PutUint64(hello[8:], serveVersion)
	if _, err := stdin.Write(hello[:]); err != nil {
		return r.fail("handshake", err)
	}
	var reply [16]byte
	if _, err := io.ReadFull(stdout, reply[:]); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if msg == "" {
			msg = "no answer"
		}
		return r.fail("handshake", fmt.Errorf("%w: %s", err, msg))
	}
	magic := binary.LittleEndian.Uint64(reply[:8])
	version := binary.LittleEndian.Uint64(reply[8:])
	if magic != serveMagic2 {
		return r.fail("handshake", fmt.Errorf("protocol mismatch: got magic %#x, want %#x (stray output on stdout?)", magic, serveMagic2))
	}
	r.ok("handshake", fmt.Sprintf("nix-store --serve protocol %d.%d", version>>8&0xff, version&0xff))
	return nil
}
