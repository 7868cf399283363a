package sshserver

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/darling-sshd/darling-sshd/auth"
)

// Nix's protocols, as far as their handshakes: the serve protocol
// (ssh://, nix-store --serve) and the daemon protocol (ssh-ng://,
// nix-daemon --stdio). The client sends its magic (and, for serve, its
// version); the server answers its magic and version.
const (
	serveMagic1   = 0x390c9deb
	serveMagic2   = 0x5452eecb
	serveVersion  = 0x206
	daemonMagic1  = 0x6e697863
	daemonMagic2  = 0x6478696f
	maxCheckError = 4 << 10 // what is kept of ssh's stderr
)

// CheckOptions is what `darling-sshd check` checks: the builder Nix knows
// by Alias, reached the way Nix reaches it.
type CheckOptions struct {
	Alias string
	// Machines is Nix's machines file: the alias's line gives the
	// identity and public host key Nix passes to ssh.
	Machines string
	// SSHConfig, if set, is passed to ssh as -F (tests; a user whose
	// registration is not where ssh looks); else ssh reads its own.
	SSHConfig string
	// ServeCommand and DaemonCommand are the remote commands, as Nix's
	// remote-program would make them.
	ServeCommand, DaemonCommand string
	Timeout                     time.Duration
	Out                         io.Writer // one line per step
}

// ErrCheckFailed is returned once a step failed; the step printed why and
// what fixes it.
var ErrCheckFailed = errors.New("check failed")

// Check does what the root Nix daemon does with a remote builder: finds
// the alias's line in the machines file, runs the system ssh with the
// alias (so the ssh configuration, known hosts and identity are those
// Nix's ssh uses), and speaks the serve protocol and then the daemon
// protocol to the commands in the prefix. It prints a line per step and
// stops at the first that fails, naming the fix.
func Check(ctx context.Context, o CheckOptions) error {
	ctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	r := checkReport{out: o.Out}
	if uid := os.Geteuid(); uid != 0 {
		fmt.Fprintf(o.Out, "note  check runs as uid %d, but the Nix daemon runs ssh as root with root's ssh configuration: run it as root to see what Nix sees\n", uid)
	}
	m, err := r.machine(o)
	if err != nil {
		return err
	}
	cfg, err := r.sshConfig(ctx, o)
	if err != nil {
		return err
	}
	if err := r.identity(m, cfg); err != nil {
		return err
	}
	args, cleanup, err := nixSSHArgs(o, m)
	if err != nil {
		return r.fail("ssh", err, "")
	}
	defer cleanup()
	target := cfg["hostname"] + ":" + cfg["port"]
	for _, p := range []struct {
		step, command string
		hello         func(io.Writer, io.Reader) (string, error)
	}{
		{"serve", o.ServeCommand, serveHello},
		{"daemon", o.DaemonCommand, daemonHello},
	} {
		if err := r.speak(ctx, o, args, p.step, p.command, target, cfg, m, p.hello); err != nil {
			return err
		}
	}
	return nil
}

// checkReport prints Check's steps, one line each.
type checkReport struct{ out io.Writer }

func (r checkReport) ok(step, detail string) {
	fmt.Fprintf(r.out, "ok    %-10s %s\n", step, detail)
}

// fail prints what failed and what fixes it, and returns ErrCheckFailed:
// the line is the report, the error only says that there was one.
func (r checkReport) fail(step string, err error, fix string) error {
	if fix != "" {
		fix = "\n      " + strings.Repeat(" ", 10) + " fix: " + fix
	}
	fmt.Fprintf(r.out, "FAIL  %-10s %v%s\n", step, err, fix)
	return ErrCheckFailed
}

// machine finds the alias's line in the machines file.
func (r checkReport) machine(o CheckOptions) (auth.Machine, error) {
	register := "run darling-sshd register"
	text, err := auth.ReadBounded(o.Machines)
	if err != nil {
		return auth.Machine{}, r.fail("machines", err, register)
	}
	m, ok := auth.FindMachine(text, o.Alias)
	if !ok {
		return m, r.fail("machines", fmt.Errorf("%s has no line for %s, so Nix does not know the builder", o.Machines, o.Alias), register)
	}
	r.ok("machines", m.URI+" in "+o.Machines)
	return m, nil
}

// sshConfig asks ssh how it resolves the alias (ssh -G).
func (r checkReport) sshConfig(ctx context.Context, o CheckOptions) (map[string]string, error) {
	args := []string{"-G"}
	if o.SSHConfig != "" {
		args = append(args, "-F", o.SSHConfig)
	}
	out, err := exec.CommandContext(ctx, "ssh", append(args, o.Alias)...).Output()
	var ee *exec.ExitError
	switch {
	case errors.Is(err, exec.ErrNotFound):
		return nil, r.fail("ssh config", err, "install openssh-client")
	case errors.As(err, &ee):
		return nil, r.fail("ssh config", fmt.Errorf("ssh -G %s: %w: %s", o.Alias, err, strings.TrimSpace(string(ee.Stderr))), "fix the ssh configuration ssh names")
	case err != nil:
		return nil, r.fail("ssh config", fmt.Errorf("ssh -G %s: %w", o.Alias, err), "")
	}
	cfg := map[string]string{}
	for _, l := range strings.Split(string(out), "\n") {
		k, v, _ := strings.Cut(l, " ")
		if _, seen := cfg[k]; !seen {
			cfg[k] = v
		}
	}
	if cfg["hostname"] == o.Alias && cfg["hostkeyalias"] != o.Alias {
		return nil, r.fail("ssh config", fmt.Errorf("ssh has no Host %s block (it would dial %s:%s)", o.Alias, o.Alias, cfg["port"]), "run darling-sshd register")
	}
	r.ok("ssh config", fmt.Sprintf("%s -> %s:%s, known hosts %s", o.Alias, cfg["hostname"], cfg["port"], cfg["userknownhostsfile"]))
	return cfg, nil
}

// identity checks that the key Nix's ssh logs in with can be read.
func (r checkReport) identity(m auth.Machine, cfg map[string]string) error {
	id := m.Identity
	if id == "" {
		id = cfg["identityfile"]
	}
	if strings.HasPrefix(id, "~/") {
		if home, err := os.UserHomeDir(); err == nil {
			id = filepath.Join(home, id[2:])
		}
	}
	f, err := os.Open(id)
	switch {
	case errors.Is(err, fs.ErrPermission):
		return r.fail("identity", err, "run check as root, as the Nix daemon runs ssh")
	case err != nil:
		return r.fail("identity", err, "create the builder key (ssh-keygen -t ed25519 -N '' -f "+id+") and re-run darling-sshd register")
	}
	f.Close()
	r.ok("identity", id)
	return nil
}

// nixSSHArgs are ssh's arguments as Nix builds them for the builder: the
// alias, -x -a, the identity of the machines line, and its public host
// key, if any, in a known_hosts file of its own; BatchMode stands for the
// daemon's missing terminal, so that check never prompts.
func nixSSHArgs(o CheckOptions, m auth.Machine) (args []string, cleanup func(), err error) {
	cleanup = func() {}
	if o.SSHConfig != "" {
		args = append(args, "-F", o.SSHConfig)
	}
	args = append(args, o.Alias, "-x", "-a", "-oBatchMode=yes")
	if m.Identity != "" {
		args = append(args, "-i", m.Identity)
	}
	if m.PublicHostKey != "" {
		key, err := base64.StdEncoding.DecodeString(m.PublicHostKey)
		if err != nil {
			return nil, cleanup, fmt.Errorf("public host key in the machines line: %w", err)
		}
		dir, err := os.MkdirTemp("", "darling-sshd-check")
		if err != nil {
			return nil, cleanup, err
		}
		cleanup = func() { os.RemoveAll(dir) }
		kh := filepath.Join(dir, "host-key")
		if err := os.WriteFile(kh, []byte(o.Alias+" "+strings.TrimSpace(string(key))+"\n"), 0o600); err != nil {
			cleanup()
			return nil, func() {}, err
		}
		args = append(args, "-oUserKnownHostsFile="+kh)
	}
	return args, cleanup, nil
}

// speak runs command through ssh and does the protocol's handshake; a
// failure is put down to the step that caused it, from ssh's messages.
func (r checkReport) speak(ctx context.Context, o CheckOptions, args []string, step, command, target string, cfg map[string]string, m auth.Machine,
	hello func(io.Writer, io.Reader) (string, error)) error {
	cmd := exec.CommandContext(ctx, "ssh", append(args, command)...)
	var stderr limitedBuffer
	stderr.max = maxCheckError
	cmd.Stderr = &stderr
	cmd.WaitDelay = time.Second
	stdin, err1 := cmd.StdinPipe()
	stdout, err2 := cmd.StdoutPipe()
	if err := errors.Join(err1, err2); err != nil {
		return r.fail(step, err, "")
	}
	if err := cmd.Start(); err != nil {
		return r.fail(step, err, "install openssh-client")
	}
	version, herr := hello(stdin, stdout)
	stdin.Close()
	if herr == nil {
		// The answer came: the rest of the session does not matter.
		cmd.Process.Kill()
		cmd.Wait()
		r.ok(step, command+": "+version)
		return nil
	}
	werr := cmd.Wait()
	if ctx.Err() != nil {
		return r.fail(step, fmt.Errorf("no answer from %s within --timeout %s: %s", target, o.Timeout, orNothing(lastLine(strings.TrimSpace(stderr.String())))),
			"the server may still be warming the prefix, its --max-exec sessions may all be busy, or the launcher hangs: see the server's log")
	}
	return r.diagnose(o, step, command, target, cfg, m, herr, werr, strings.TrimSpace(stderr.String()))
}

// diagnose names the step that failed, from what ssh and the command said.
func (r checkReport) diagnose(o CheckOptions, step, command, target string, cfg map[string]string, m auth.Machine, herr, werr error, stderr string) error {
	code := -1
	var ee *exec.ExitError
	if errors.As(werr, &ee) {
		code = ee.ExitCode()
	}
	last := lastLine(stderr)
	program, _, _ := strings.Cut(command, " ")
	// ssh's own failures exit 255 and say so in ssh's words; anything
	// else on stderr is the prefix's or the command's.
	own := code == 255
	switch {
	case own && (strings.Contains(stderr, "ssh: connect to host") || strings.Contains(stderr, "Could not resolve hostname")):
		return r.fail("tcp", fmt.Errorf("nothing answers at %s: %s", target, last), "start darling-sshd serve (it must listen on "+target+"), or re-run darling-sshd register with its --listen")
	case own && (strings.Contains(stderr, "IDENTIFICATION HAS CHANGED") || strings.Contains(stderr, "Host key verification failed.")):
		where := "known_hosts " + cfg["userknownhostsfile"]
		if m.PublicHostKey != "" {
			where = "the machines line"
		}
		return r.fail("host key", fmt.Errorf("the server at %s does not have the host key %s trusts for %s: %s", target, where, o.Alias, last),
			"host key changed: re-run darling-sshd register (or, if the server should not have changed, find out why)")
	case own && (strings.Contains(stderr, "Permission denied (") || strings.Contains(stderr, "Too many authentication failures")):
		id := m.Identity
		if id == "" {
			id = cfg["identityfile"]
		}
		return r.fail("auth", fmt.Errorf("the server refused the key %s: %s", id, last),
			"key not in authorized keys: add "+id+".pub to serve's --authorized-keys (then reload: SIGHUP)")
	case code == 127 || (strings.Contains(stderr, program) && strings.Contains(stderr, "not found")):
		return r.fail(step, fmt.Errorf("%s not found in the prefix: %s", program, last),
			"install Nix in the prefix (README: How Nix gets into a real Darling prefix), then darling-sshd init")
	case own && stderr != "":
		return r.fail("ssh", errors.New(last), "")
	case code > 0:
		return r.fail(step, fmt.Errorf("%s exited with status %d before answering: %s", command, code, orNothing(last)),
			"run it by hand to see why: ssh "+o.Alias+" "+command)
	}
	return r.fail(step, fmt.Errorf("%s did not answer the handshake: %v; %s", command, herr, orNothing(last)),
		"anything on the command's stdout before Nix's protocol breaks it; see the server's log")
}

func lastLine(s string) string {
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return s[i+1:]
	}
	return s
}

func orNothing(s string) string {
	if s == "" {
		return "nothing on stderr"
	}
	return s
}

// serveHello sends the client's hello of the serve protocol and checks
// the answer.
func serveHello(w io.Writer, r io.Reader) (string, error) {
	var hello [16]byte
	binary.LittleEndian.PutUint64(hello[:8], serveMagic1)
	binary.LittleEndian.PutUint64(hello[8:], serveVersion)
	if _, err := w.Write(hello[:]); err != nil {
		return "", err
	}
	var reply [16]byte
	if _, err := io.ReadFull(r, reply[:]); err != nil {
		return "", err
	}
	if magic := binary.LittleEndian.Uint64(reply[:8]); magic != serveMagic2 {
		return "", fmt.Errorf("protocol mismatch: got magic %#x, want %#x (stray output on stdout?)", magic, serveMagic2)
	}
	v := binary.LittleEndian.Uint64(reply[8:])
	return fmt.Sprintf("serve protocol %d.%d", v>>8&0xff, v&0xff), nil
}

// daemonHello sends the client's magic of the daemon protocol and checks
// the answer.
func daemonHello(w io.Writer, r io.Reader) (string, error) {
	var hello [8]byte
	binary.LittleEndian.PutUint64(hello[:], daemonMagic1)
	if _, err := w.Write(hello[:]); err != nil {
		return "", err
	}
	var reply [16]byte
	if _, err := io.ReadFull(r, reply[:]); err != nil {
		return "", err
	}
	if magic := binary.LittleEndian.Uint64(reply[:8]); magic != daemonMagic2 {
		return "", fmt.Errorf("protocol mismatch: got magic %#x, want %#x (stray output on stdout?)", magic, daemonMagic2)
	}
	v := binary.LittleEndian.Uint64(reply[8:])
	return fmt.Sprintf("daemon protocol %d.%d", v>>8&0xff, v&0xff), nil
}

// limitedBuffer keeps the last max bytes written to it: ssh's own
// message comes last, after whatever the prefix printed.
type limitedBuffer struct {
	bytes.Buffer
	max int
}

func (b *limitedBuffer) Write(p []byte) (int, error) {
	if len(p) > b.max {
		b.Reset()
		p = p[len(p)-b.max:]
	}
	b.Buffer.Write(p)
	if over := b.Len() - b.max; over > 0 {
		b.Next(over)
	}
	return len(p), nil
}
