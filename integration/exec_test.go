package integration

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestExitCodes(t *testing.T) {
	s := startServer(t, serverOpt{})
	for _, code := range []int{0, 1, 42, 255} {
		r := s.exec(fmt.Sprintf("exit %d", code), "")
		if r.code != code {
			t.Errorf("exit %d: ssh exited %d (stderr %q)", code, r.code, r.stderr)
		}
	}
}

func TestStdoutStderrApart(t *testing.T) {
	s := startServer(t, serverOpt{})
	r := s.exec("echo out1; echo err1 >&2; echo out2; echo err2 >&2", "")
	if r.stdout != "out1\nout2\n" || r.stderr != "err1\nerr2\n" || r.code != 0 {
		t.Errorf("got stdout %q stderr %q code %d", r.stdout, r.stderr, r.code)
	}
}

func TestStdinToEOF(t *testing.T) {
	s := startServer(t, serverOpt{})
	in := "line one\nline two\n\x00\xff binary\n"
	r := s.exec("cat; echo done", in)
	if r.stdout != in+"done\n" || r.code != 0 {
		t.Errorf("got %q code %d, want the input then done", r.stdout, r.code)
	}
}

// TestEnvironment checks the launcher's environment is built from scratch:
// the server's own variables do not leak, the session's are there.
func TestEnvironment(t *testing.T) {
	s := startServer(t, serverOpt{env: []string{"NOTIFY_SOCKET=/run/x", "INVOCATION_ID=abc", "LEAKME=1"}})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := s.ssh(ctx, "-o", "SetEnv=LANG=fr_FR.UTF-8 LC_ALL=C FOO=bar", "dut", "env").Output()
	if err != nil {
		t.Fatal(err)
	}
	env := parseEnv(out)
	for _, k := range []string{"NOTIFY_SOCKET", "INVOCATION_ID", "LEAKME", "FOO"} {
		if _, ok := env[k]; ok {
			t.Errorf("%s leaked into the session", k)
		}
	}
	if v, ok := env["DPREFIX"]; ok {
		t.Errorf("DPREFIX=%q reached the command: Darling's launcher removes it", v)
	}
	want := map[string]string{"USER": "root", "LOGNAME": "root", "HOME": "/Users/root",
		"LANG": "fr_FR.UTF-8", "LC_ALL": "C"}
	for k, v := range want {
		if env[k] != v {
			t.Errorf("%s=%q, want %q", k, env[k], v)
		}
	}
	if !strings.HasPrefix(env["SSH_CONNECTION"], "127.0.0.1 ") || !strings.HasSuffix(env["SSH_CONNECTION"], " 127.0.0.1 "+s.port) {
		t.Errorf("SSH_CONNECTION=%q", env["SSH_CONNECTION"])
	}
	if !strings.HasSuffix(env["SSH_CLIENT"], " "+s.port) {
		t.Errorf("SSH_CLIENT=%q", env["SSH_CLIENT"])
	}
}

// TestQuoting runs nasty command strings through the server and through a
// local sh -c: the command must reach /bin/sh -c exactly as sent.
func TestQuoting(t *testing.T) {
	s := startServer(t, serverOpt{})
	cmds := []string{
		`printf '%s\n' 'single quoted'`,
		`printf '%s\n' "double $((6*7))"`,
		`printf '%s\n' 'it'"'"'s' "it's"`,
		`printf '%s\n' 'a'\''b'`,
		`printf '%s\n' "back\\slash" 'back\slash'`,
		`printf '%s|' a\ b c "d  e"`,
		"printf 'line1\\n'\nprintf 'line2\\n'",
		`printf '%s\n' 'héllo wörld ✓ 日本語'`,
		`x='$notavar'; printf '%s\n' "$x" '$HOME'`,
		`true && printf 'and\n'; false || printf 'or\n'`,
		`printf '%s\n' /nonexistent-glob-*`,
		"printf '%s\\n' \"tab\there\"",
		"printf '%s\\n' `printf backtick`",
		`set -- a 'b c' "d'e" ""; printf '<%s>' "$@"; echo $#`,
		`printf '%s\n' '!bang' '#hash' '~tilde' '*star' '{a,b}'`,
		`printf '%s\n' "$(printf '%s' 'nested "q" '\''s'\')"`,
		"cat <<'EOF'\n$literal `not run` \"q\" 'q'\nEOF",
		`echo ';' '&&' '|' '>' '<' '(' ')'`,
		`exit 3`,
		`printf '%s\n' '\x41\101' "\$(date)"`,
		`printf -- '-%s-\n' --`,
		` printf '%s\n' 'leading and trailing spaces' `,
	}
	for i, c := range cmds {
		local := exec.Command("sh", "-c", c)
		local.Dir = os.TempDir()
		want, err := local.Output()
		wantCode := 0
		if ee, ok := err.(*exec.ExitError); ok {
			wantCode = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		r := s.exec(c, "")
		if r.stdout != string(want) || r.code != wantCode {
			t.Errorf("case %d %q:\n got %q (exit %d, stderr %q)\nwant %q (exit %d)", i, c, r.stdout, r.code, r.stderr, want, wantCode)
		}
	}
}

// TestLargeTransfer moves 256 MiB in and 256 MiB out, compared by SHA-256.
func TestLargeTransfer(t *testing.T) {
	const size = 256 << 20
	s := startServer(t, serverOpt{})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	t.Run("in", func(t *testing.T) {
		h := sha256.New()
		cmd := s.ssh(ctx, "dut", "sha256sum")
		src := io.TeeReader(io.LimitReader(rand.NewChaCha8([32]byte{1, 2, 3}), size), h)
		cmd.Stdin = src
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("ssh sha256sum: %v", err)
		}
		want := hex.EncodeToString(h.Sum(nil))
		if got, _, _ := strings.Cut(string(out), " "); got != want {
			t.Errorf("remote sha256 %q, sent %q", got, want)
		}
	})
	t.Run("out", func(t *testing.T) {
		cmd := s.ssh(ctx, "dut", fmt.Sprintf(`f=$(mktemp) && head -c %d /dev/urandom > "$f" && sha256sum < "$f" >&2 && cat "$f"; rm -f "$f"`, size))
		var stderr strings.Builder
		cmd.Stderr = &stderr
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		h := sha256.New()
		n, err := io.Copy(h, stdout)
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Wait(); err != nil {
			t.Fatalf("ssh: %v %s", err, stderr.String())
		}
		got := hex.EncodeToString(h.Sum(nil))
		if want, _, _ := strings.Cut(stderr.String(), " "); n != size || got != want {
			t.Errorf("received %d bytes with sha256 %s, remote had %q", n, got, stderr.String())
		}
	})
}

func TestConcurrentSessions(t *testing.T) {
	const n = 32
	s := startServer(t, serverOpt{})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	// Every session waits at a barrier until all n are running, so they
	// really run at once.
	if r := s.exec("mkdir -p /private/tmp/barrier", ""); r.code != 0 {
		t.Fatalf("mkdir barrier: %+v", r)
	}
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cmd := s.ssh(ctx, "dut", fmt.Sprintf(
				`touch /private/tmp/barrier/%d; while [ $(ls /private/tmp/barrier | wc -l) -lt %d ]; do sleep 0.05; done; echo session %d; head -c 1000000 /dev/zero | wc -c`, i, n, i))
			out, err := cmd.Output()
			if want := fmt.Sprintf("session %d\n1000000\n", i); err != nil || string(out) != want {
				errs <- fmt.Errorf("session %d: %v %q", i, err, out)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// TestShellWithoutPty runs the login shell reading commands from stdin.
func TestShellWithoutPty(t *testing.T) {
	s := startServer(t, serverOpt{})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := s.ssh(ctx, "-T", "dut")
	cmd.Stdin = strings.NewReader("echo sum $((2+3))\necho $HOME\nexit 4\n")
	out, err := cmd.Output()
	if cmd.ProcessState.ExitCode() != 4 || string(out) != "sum 5\n/Users/root\n" {
		t.Errorf("shell: %v %q exit %d", err, out, cmd.ProcessState.ExitCode())
	}
}

func TestCommandTooLong(t *testing.T) {
	s := startServer(t, serverOpt{})
	r := s.exec("echo "+strings.Repeat("x", 70000), "")
	if r.code != 255 || !strings.Contains(r.stderr, "too long") || r.stdout != "" {
		t.Errorf("got %+v, want exit 255 and a message on stderr", r)
	}
	// Quotes grow fourfold in Darling's quoting: a command under the limit
	// as sent can be over it once quoted.
	r = s.exec("printf %s "+strings.Repeat("'", 20000), "")
	if r.code != 255 || !strings.Contains(r.stderr, "too long") {
		t.Errorf("quoted: got code %d stderr %q", r.code, r.stderr)
	}
	if r := s.exec("echo still serving", ""); r.stdout != "still serving\n" {
		t.Errorf("after refusal: %+v", r)
	}
}

// TestPrefixStyleFlag serves through a wrapper that takes --prefix (the
// stand-in's wrapper mode), with --prefix-style flag.
func TestPrefixStyleFlag(t *testing.T) {
	dir := t.TempDir()
	wrapper := filepath.Join(dir, "darling")
	script := "#!/bin/sh\nDARLING_STANDIN_WRAPPER=1 exec " + bins.standin + " \"$@\"\n"
	if err := os.WriteFile(wrapper, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	s := startServer(t, serverOpt{args: []string{"--darling", wrapper, "--prefix-style", "flag"}})
	if r := s.exec(`echo in; ls -d /Users/root`, ""); r.stdout != "in\n/Users/root\n" || r.code != 0 {
		t.Errorf("flag style: %+v", r)
	}
}

// TestFlagStyleAgainstUpstream: upstream's launcher has no --prefix
// option; the server refuses to start with one line saying which style to
// use, and the launcher's whole output.
func TestFlagStyleAgainstUpstream(t *testing.T) {
	log := serveFails(t, "--prefix-style", "flag")
	if !strings.Contains(log, "use --prefix-style env") || !strings.Contains(log, "is not a supported command") {
		t.Errorf("server with --prefix-style flag against upstream's launcher:\n%s", log)
	}
}

// TestSignalKilledStatus: Darling's shellspawn reports only WEXITSTATUS
// of its direct child, so a command killed by a signal could reach the
// client as status 0. It must arrive as 128+n, as from a shell.
func TestSignalKilledStatus(t *testing.T) {
	s := startServer(t, serverOpt{})
	for cmd, want := range map[string]int{"kill -KILL $$": 137, "kill -TERM $$": 143, "exit 7": 7} {
		if r := s.exec(cmd, ""); r.code != want {
			t.Errorf("%q: status %d, want %d (%+v)", cmd, r.code, want, r)
		}
	}
}

// TestCleanStdout: what the prefix's startup files print to stdout before
// the command runs never reaches the client.
func TestCleanStdout(t *testing.T) {
	s := startServer(t, serverOpt{})
	junk := "echo 'Welcome to Darling (stdout junk)'; printf '\\000\\001binary junk'\n"
	// Written through a session: the prefix folder is an overlay's upper
	// layer, not to be changed behind it.
	for _, f := range []string{"/etc/profile", "/Users/root/.bash_profile"} {
		if r := s.exec("cat >> "+f, junk); r.code != 0 {
			t.Fatalf("append to %s: %+v", f, r)
		}
	}
	if r := s.exec("printf clean; printf err >&2", ""); r.stdout != "clean" || r.stderr != "err" || r.code != 0 {
		t.Errorf("with noisy startup files: %+v", r)
	}
}
