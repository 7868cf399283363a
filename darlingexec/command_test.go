package darlingexec

import (
	"errors"
	"io"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/creack/pty"
)

func TestArgs(t *testing.T) {
	for _, tc := range []struct {
		style Style
		req   Request
		want  []string
	}{
		{StyleFlag, Request{Command: "nix-store --serve --write"},
			[]string{"--prefix", "/p", "shell", "/bin/sh", "-c", Script("nix-store --serve --write", "")}},
		{StyleEnv, Request{Command: "true"}, []string{"shell", "/bin/sh", "-c", Script("true", "")}},
		{StyleFlag, Request{Shell: true}, []string{"--prefix", "/p", "shell", "/bin/sh", "-c", shellScript("", "")}},
		{StyleEnv, Request{Shell: true}, []string{"shell", "/bin/sh", "-c", shellScript("", "")}},
		// An exec of the empty string is a command, not a login shell.
		{StyleEnv, Request{Command: ""}, []string{"shell", "/bin/sh", "-c", Script("", "")}},
	} {
		l := &Launcher{Prefix: "/p", Style: tc.style}
		if got := l.Args(tc.req, ""); !slices.Equal(got, tc.want) {
			t.Errorf("%s %+v:\n got %q\nwant %q", tc.style, tc.req, got, tc.want)
		}
	}
}

// darlingJoin is what Darling's launcher does with the arguments after
// "shell": single-quote each, join with spaces, for bash -c.
func darlingJoin(args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		q[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
	}
	return strings.Join(q, " ")
}

// TestScriptReachesShExactly runs the script as Darling would (bash -c on
// the joined, quoted arguments) and compares with sh -c on the command.
func TestScriptReachesShExactly(t *testing.T) {
	home := t.TempDir()
	for _, c := range []string{
		`printf '%s\n' "$0"`,
		`printf '<%s>' 'a'\''b' "c\"d" '$x' "\$y" '\'`,
		"printf 'multi\\nline\\n'\necho second",
		`printf '%s\n' 'UTF-8 ✓ 日本'`,
		`echo "$((1+2))" ; exit 7`,
		``,
		`'`,
	} {
		l := &Launcher{Prefix: "/p", Style: StyleEnv}
		const marker = "\x1emark:0123456789\x1e"
		args := l.Args(Request{Command: c}, marker)
		if strings.Contains(args[len(args)-1], marker) {
			t.Errorf("the script holds the marker literally: %q", args[len(args)-1])
		}
		viaDarling := exec.Command("bash", "--norc", "-c", darlingJoin(args[1:]))
		viaDarling.Env = []string{"HOME=" + home, "PATH=" + os.Getenv("PATH")}
		viaDarling.Dir = home
		raw, gerr := viaDarling.CombinedOutput()
		direct := exec.Command("/bin/sh", "-c", c)
		direct.Dir = home
		want, werr := direct.CombinedOutput()
		got, ok := strings.CutPrefix(string(raw), marker)
		if !ok || got != string(want) || exitCode(gerr) != exitCode(werr) {
			t.Errorf("%q: via the launcher %q (exit %d), sh -c %q (exit %d)", c, got, exitCode(gerr), want, exitCode(werr))
		}
	}
}

func exitCode(err error) int {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	if err != nil {
		return -1
	}
	return 0
}

func TestEnvFromScratch(t *testing.T) {
	l := &Launcher{Prefix: "/var/lib/p", HostEnv: []string{"HOME=/root", "PATH=/usr/bin"}}
	got := l.Env(Request{User: "root", Env: []string{"SSH_CONNECTION=a b c d", "TERM=xterm"}}, "abc")
	want := []string{"HOME=/root", "PATH=/usr/bin", "DPREFIX=/var/lib/p", SessionVar + "=abc", "USER=root", "LOGNAME=root",
		"SSH_CONNECTION=a b c d", "TERM=xterm"}
	if !slices.Equal(got, want) {
		t.Errorf("env\n got %q\nwant %q", got, want)
	}
	// The warm-up carries no session marker: the container it starts must
	// never be taken for a session's process.
	for _, kv := range l.Env(Request{}, "") {
		if strings.HasPrefix(kv, SessionVar+"=") {
			t.Errorf("warm-up env has %s", kv)
		}
	}
}

func TestCheckLimits(t *testing.T) {
	l := &Launcher{Prefix: "/p", Style: StyleFlag}
	fixed := darlingJoin(l.Args(Request{Command: ""}, "")[3:])
	// A command of n plain bytes adds n to the joined string.
	room := MaxMessage - 1 - len(fixed)
	if err := Check(l.Args(Request{Command: strings.Repeat("x", room)}, ""), nil); err != nil {
		t.Errorf("command exactly at the limit refused: %v", err)
	}
	if err := Check(l.Args(Request{Command: strings.Repeat("x", room+1)}, ""), nil); !errors.Is(err, ErrTooLong) {
		t.Errorf("command one byte over: %v, want ErrTooLong", err)
	}
	// Each quote costs 13 bytes once quoted twice (by us, then Darling).
	if err := Check(l.Args(Request{Command: strings.Repeat("'", room/13+1)}, ""), nil); !errors.Is(err, ErrTooLong) {
		t.Errorf("quotes over the limit once quoted: %v, want ErrTooLong", err)
	}
	if err := Check(l.Args(Request{Command: strings.Repeat("'", room/13)}, ""), nil); err != nil {
		t.Errorf("quotes under the limit once quoted: %v", err)
	}
	if err := Check(nil, []string{"X=" + strings.Repeat("v", MaxMessage-3)}); err != nil {
		t.Errorf("variable at the limit: %v", err)
	}
	if err := Check(nil, []string{"X=" + strings.Repeat("v", MaxMessage-2)}); !errors.Is(err, ErrTooLong) {
		t.Errorf("variable over the limit: %v", err)
	}
	if err := Check(l.Args(Request{Command: "a\x00b"}, ""), nil); err == nil {
		t.Errorf("NUL in command accepted")
	}
}

func TestSessionOf(t *testing.T) {
	for env, want := range map[string]string{
		"A=1\x00DARLING_SSHD_SESSION=abc\x00B=2\x00":   "abc",
		"X=1\x00DARLING_SSHD_SESSION=abc":              "abc", // last entry, no NUL
		"SSHD_SESSION=abc\x00X_DARLING_SSHD_SESSION=x": "",
		"DARLING_SSHD_SESSIONX=abc":                    "",
		"":                                             "",
	} {
		if got := sessionOf([]byte(env)); got != want {
			t.Errorf("sessionOf(%q) = %q, want %q", env, got, want)
		}
	}
}

func TestSignalName(t *testing.T) {
	for sig, want := range map[int]string{1: "HUP", 9: "KILL", 15: "TERM", 6: "ABRT", 7: "SIG@openssh.com"} {
		if got := signalName(syscall.Signal(sig)); got != want {
			t.Errorf("signal %d: %q, want %q", sig, got, want)
		}
	}
}

// TestScriptReportsSignalStatus: Darling's shellspawn reports only
// WEXITSTATUS of its direct child, so a direct child killed by a signal
// shows as status 0. Run as shellspawn would (bash -c on the joined
// arguments, exec'ing /bin/sh in place, as bash does a single command),
// the script's own exit status must be 128+n for a command that a signal
// killed, and the script itself must be a normal exit.
func TestScriptReportsSignalStatus(t *testing.T) {
	l := &Launcher{Prefix: "/p", Style: StyleEnv}
	for cmd, want := range map[string]int{
		"kill -KILL $$":                   137,
		"kill -TERM $$":                   143,
		"exit 3":                          3,
		"sleep 1000 & kill -TERM 0; wait": 143, // the whole group, the script's shell too
	} {
		args := l.Args(Request{Command: cmd}, "")
		c := exec.Command("bash", "--norc", "-c", darlingJoin(args[1:]))
		c.Env = []string{"HOME=" + t.TempDir(), "PATH=" + os.Getenv("PATH")}
		c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		err := c.Run()
		var ee *exec.ExitError
		switch {
		case err == nil:
			t.Errorf("%q: status 0, want %d", cmd, want)
		case !errors.As(err, &ee):
			t.Errorf("%q: %v", cmd, err)
		case !ee.Exited():
			t.Errorf("%q: the script's shell died of %v: shellspawn would report 0", cmd, ee.Sys())
		case ee.ExitCode() != want:
			t.Errorf("%q: status %d, want %d", cmd, ee.ExitCode(), want)
		}
	}
}

// TestScriptSetsSSHTTY runs a terminal session's script as Darling would,
// on a pty of its own as Darling's launcher gives the command: SSH_TTY is
// that terminal, whatever the environment said. Off a terminal it is unset,
// and a session without a pty pays no fork for it.
func TestScriptSetsSSHTTY(t *testing.T) {
	l := &Launcher{Prefix: "/p", Style: StyleEnv}
	const check = `[ "$SSH_TTY" = "$(tty)" ] && echo same; echo "tty=${SSH_TTY-unset}"`
	for _, req := range []Request{{Command: check, PTY: &PTY{}}, {Shell: true, PTY: &PTY{}}} {
		args := l.Args(req, "")
		master, slave, err := pty.Open()
		if err != nil {
			t.Fatal(err)
		}
		c := exec.Command("bash", "--norc", "-c", darlingJoin(args[1:]))
		c.Env = []string{"HOME=" + t.TempDir(), "PATH=" + os.Getenv("PATH"), "SSH_TTY=/dev/pts/host-side"}
		c.Stdin, c.Stdout, c.Stderr = slave, slave, slave
		c.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true}
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		slave.Close()
		if req.Shell {
			master.Write([]byte(check + "; exit\n"))
		}
		out, _ := io.ReadAll(master) // EIO once the shell is gone
		c.Wait()
		master.Close()
		if !strings.Contains(string(out), "same\r\n") || !strings.Contains(string(out), "tty=/dev/") {
			t.Errorf("shell %v on a terminal: %q", req.Shell, out)
		}
	}
	args := l.Args(Request{Command: `echo "tty=${SSH_TTY-unset}"`, PTY: &PTY{}}, "")
	c := exec.Command("bash", "--norc", "-c", darlingJoin(args[1:]))
	c.Env = []string{"HOME=" + t.TempDir(), "PATH=" + os.Getenv("PATH"), "SSH_TTY=/dev/pts/host-side"}
	if out, err := c.Output(); err != nil || string(out) != "tty=unset\n" {
		t.Errorf("off a terminal: %q %v, want SSH_TTY unset and nothing else on stdout", out, err)
	}
	if s := l.Args(Request{Command: "true"}, "")[3]; strings.Contains(s, "tty") {
		t.Errorf("a session without a pty runs tty: %q", s)
	}
}
