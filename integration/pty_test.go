package integration

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"
)

// tmux drives a real interactive ssh client in a terminal of a given size.
type tmux struct {
	t      *testing.T
	socket string
	name   string
}

func newTmux(t *testing.T, s *server, cols, rows int, command string) *tmux {
	t.Helper()
	if _, err := exec.LookPath("tmux"); err != nil {
		t.Fatal("tmux not found: make test installs it")
	}
	tm := &tmux{t: t, socket: s.dir + "/tmux.sock", name: "dut"}
	tm.run("new-session", "-d", "-s", tm.name, "-x", fmt.Sprint(cols), "-y", fmt.Sprint(rows), command)
	t.Cleanup(func() { exec.Command("tmux", "-S", tm.socket, "kill-server").Run() })
	return tm
}

func (tm *tmux) run(args ...string) string {
	tm.t.Helper()
	out, err := exec.Command("tmux", append([]string{"-S", tm.socket}, args...)...).CombinedOutput()
	if err != nil {
		tm.t.Fatalf("tmux %v: %v %s", args, err, out)
	}
	return string(out)
}

func (tm *tmux) keys(keys ...string) {
	tm.run(append([]string{"send-keys", "-t", tm.name}, keys...)...)
}

func (tm *tmux) screen() string { return tm.run("capture-pane", "-p", "-t", tm.name) }

// waitScreen waits until the screen holds want.
func (tm *tmux) waitScreen(want string) {
	tm.t.Helper()
	if !waitFor(time.Minute, func() bool { return strings.Contains(tm.screen(), want) }) {
		tm.t.Fatalf("screen never showed %q:\n%s", want, tm.screen())
	}
}

// TestInteractiveShell types into a real `ssh -tt` under tmux: terminal
// size at start and after a resize, TERM, Ctrl-C on a running program,
// and the shell's exit status as the session's.
func TestInteractiveShell(t *testing.T) {
	s := startServer(t, serverOpt{})
	tm := newTmux(t, s, 100, 30, "ssh -F "+s.sshConfig+" -tt dut; echo SSH-EXIT=$?; sleep 600")
	tm.waitScreen("#")
	tm.keys("echo size=$(stty size) cols=$(tput cols) term=$TERM tty=${SSH_TTY:+set}", "Enter")
	tm.waitScreen("size=30 100 cols=100 term=tmux-256color tty=set")
	tm.run("resize-window", "-t", tm.name, "-x", "120", "-y", "40")
	tm.keys("echo resized=$(stty size)", "Enter")
	tm.waitScreen("resized=40 120")
	d := uniqueSleep()
	tm.keys("sleep "+d+"; echo interrupted=$?", "Enter")
	if !waitFor(time.Minute, func() bool { return len(procsWithArgs("sleep", d)) == 1 }) {
		t.Fatalf("sleep never started:\n%s", tm.screen())
	}
	tm.keys("C-c")
	if !waitFor(time.Minute, func() bool { return len(procsWithArgs("sleep", d)) == 0 }) {
		t.Fatalf("Ctrl-C did not interrupt sleep:\n%s", tm.screen())
	}
	tm.keys("exit 7", "Enter")
	tm.waitScreen("SSH-EXIT=7")
}

// TestInteractiveDisconnect: when the client of a terminal session goes
// away, the shell and what it started end too.
func TestInteractiveDisconnect(t *testing.T) {
	s := startServer(t, serverOpt{})
	tm := newTmux(t, s, 80, 24, "ssh -F "+s.sshConfig+" -tt dut; sleep 600")
	tm.waitScreen("#")
	d := uniqueSleep()
	tm.keys("sleep "+d, "Enter")
	if !waitFor(time.Minute, func() bool { return len(procsWithArgs("sleep", d)) == 1 }) {
		t.Fatalf("sleep never started:\n%s", tm.screen())
	}
	for _, pid := range procsMatching(func(cl string) bool {
		return strings.HasPrefix(cl, "ssh\x00-F\x00"+s.sshConfig+"\x00-tt\x00")
	}) {
		killPid(pid)
	}
	if !waitFor(killGrace+5*time.Second, func() bool {
		return len(procsWithArgs("sleep", d)) == 0 && len(procsInPrefix(s.prefix, "bash")) == 0
	}) {
		t.Errorf("after the client went away: sleep %v, shells %v", procsWithArgs("sleep", d), procsInPrefix(s.prefix, "bash"))
	}
}

// TestPtyOnlyWhenAsked: ssh -t gives a command a terminal; -T and plain
// exec never get one.
func TestPtyOnlyWhenAsked(t *testing.T) {
	s := startServer(t, serverOpt{})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, _ := s.ssh(ctx, "-tt", "dut", "tty >/dev/null && echo has-tty").Output()
	if !strings.Contains(string(out), "has-tty") {
		t.Errorf("ssh -tt cmd: %q", out)
	}
	for _, args := range [][]string{{"-T", "dut", "tty"}, {"dut", "tty"}} {
		out, _ := s.ssh(ctx, args...).Output()
		if string(out) != "not a tty\n" {
			t.Errorf("ssh %v: %q, want no terminal", args, out)
		}
	}
}

// TestPtySSHTTY: SSH_TTY names the terminal the command has, as it sees
// it (Darling's launcher relays to a pty of its own, not the server's),
// in an interactive shell and for ssh -t with a command; without a pty
// it is unset.
func TestPtySSHTTY(t *testing.T) {
	s := startServer(t, serverOpt{})
	tm := newTmux(t, s, 100, 30, "ssh -F "+s.sshConfig+" -tt dut; sleep 600")
	tm.waitScreen("#")
	// The arithmetic keeps the typed line itself from matching.
	tm.keys(`[ "$SSH_TTY" = "$(tty)" ] && echo ssh-tty-$((6*7))`, "Enter")
	tm.waitScreen("ssh-tty-42")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := s.ssh(ctx, "-tt", "dut", `[ "$SSH_TTY" = "$(tty)" ] && echo same; echo "tty=$SSH_TTY"`).Output()
	if !strings.Contains(string(out), "same\r\n") || !strings.Contains(string(out), "tty=/dev/") {
		t.Errorf("ssh -tt cmd: %q %v", out, err)
	}
	if r := s.exec(`echo "${SSH_TTY-unset}"`, ""); r.stdout != "unset\n" {
		t.Errorf("without a pty: %+v", r)
	}
}

func ptyReq(term string, cols, rows uint32, modes []byte) []byte {
	return gossh.Marshal(struct {
		Term             string
		Cols, Rows, W, H uint32
		Modes            string
	}{term, cols, rows, 0, 0, string(modes)})
}

func winch(cols, rows uint32) []byte {
	return gossh.Marshal(struct{ Cols, Rows, W, H uint32 }{cols, rows, 0, 0})
}

// mode encodes one terminal mode (RFC 4254 section 8).
func mode(op byte, arg uint32) []byte {
	return binary.BigEndian.AppendUint32([]byte{op}, arg)
}

// TestPtySequences sends exact pty-req and window-change sequences with
// the Go client: modes applied, window changes before the command (many
// at once) and after it started, none of them blocking.
func TestPtySequences(t *testing.T) {
	s := startServer(t, serverOpt{})
	c := s.dialGo(t)
	ch, reqs, err := c.OpenChannel("session", nil)
	if err != nil {
		t.Fatal(err)
	}
	go gossh.DiscardRequests(reqs)
	// ECHO off, ICANON on, VINTR = Ctrl-B: the terminal must say so.
	modes := append(append(append(mode(53, 0), mode(51, 1)...), mode(1, 2)...), 0)
	if ok, err := ch.SendRequest("pty-req", true, ptyReq("vt100", 90, 20, modes)); !ok || err != nil {
		t.Fatalf("pty-req: %v %v", ok, err)
	}
	// More window changes than x/crypto queues per channel (16), before
	// the command: none may block, the last wins.
	for i := range 40 {
		if _, err := ch.SendRequest("window-change", false, winch(uint32(50+i), 10)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := ch.SendRequest("window-change", false, winch(77, 22)); err != nil {
		t.Fatal(err)
	}
	cmd := `echo start=$(stty size) term=$TERM; stty -a | grep -qw -- -echo && echo echo-off; stty -a | grep -o 'intr = [^;]*'; read x; echo after=$(stty size)`
	if ok, err := ch.SendRequest("exec", true, gossh.Marshal(struct{ Command string }{cmd})); !ok || err != nil {
		t.Fatalf("exec: %v %v", ok, err)
	}
	var out syncBuffer
	readDone := make(chan struct{})
	go func() {
		io.Copy(&out, ch)
		close(readDone)
	}()
	readUntil := func(want string) {
		t.Helper()
		if !waitFor(time.Minute, func() bool { return strings.Contains(out.String(), want) }) {
			t.Fatalf("output never held %q: %q", want, out.String())
		}
	}
	readUntil("start=22 77 term=vt100")
	readUntil("intr = ^B")
	if !strings.Contains(out.String(), "echo-off") {
		t.Errorf("ECHO off not applied: %q", out.String())
	}
	// With a reply asked for, the change is in place once answered,
	// before the command reads its size again.
	if ok, err := ch.SendRequest("window-change", true, winch(132, 43)); !ok || err != nil {
		t.Fatalf("window-change: %v %v", ok, err)
	}
	ch.Write([]byte("\n"))
	readUntil("after=43 132")
	<-readDone
}

// TestInteractiveCtrlD: Ctrl-D at the prompt ends the shell and the
// session.
func TestInteractiveCtrlD(t *testing.T) {
	s := startServer(t, serverOpt{})
	tm := newTmux(t, s, 80, 24, "ssh -F "+s.sshConfig+" -tt dut; echo SSH-EXIT=$?; sleep 600")
	tm.waitScreen("#")
	tm.keys("false", "Enter")
	tm.keys("C-d")
	tm.waitScreen("SSH-EXIT=1")
}
