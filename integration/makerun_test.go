package integration

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// makeRun is `make run` started as a person starts it in a terminal: its
// own process group, which Ctrl-C signals as a whole.
type makeRun struct {
	t      *testing.T
	cmd    *exec.Cmd
	out    syncBuffer
	lines  chan string
	exited chan struct{}
}

// startMakeRun runs `make run` from the repository with its state in
// runDir and its binaries in binDir, on port.
func startMakeRun(t *testing.T, runDir, binDir, port string) *makeRun {
	t.Helper()
	m := &makeRun{t: t, lines: make(chan string, 1024), exited: make(chan struct{})}
	m.cmd = exec.Command("make", "--no-print-directory", "-C", "..", "run", "PORT="+port, "RUN_DIR="+runDir, "BIN="+binDir)
	// As in a terminal with no darling installed: PATH without one.
	m.cmd.Env = []string{"HOME=/root", "PATH=" + os.Getenv("PATH"), "GOCACHE=" + goEnv(t, "GOCACHE"), "GOMODCACHE=" + goEnv(t, "GOMODCACHE"),
		"GOFLAGS=" + os.Getenv("GOFLAGS"), "GOPROXY=" + goEnv(t, "GOPROXY")}
	m.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	r, w := io.Pipe()
	m.cmd.Stdout, m.cmd.Stderr = w, w
	if err := m.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			fmt.Fprintln(&m.out, sc.Text())
			select {
			case m.lines <- sc.Text():
			default:
			}
		}
	}()
	go func() {
		m.cmd.Wait()
		w.Close()
		close(m.exited)
	}()
	t.Cleanup(func() {
		syscall.Kill(-m.cmd.Process.Pid, syscall.SIGKILL)
		<-m.exited
	})
	return m
}

func goEnv(t *testing.T, name string) string {
	out, err := exec.Command("go", "env", name).Output()
	if err != nil {
		t.Fatalf("go env %s: %v", name, err)
	}
	return strings.TrimSpace(string(out))
}

// waitLine waits for a line containing sub, or for make to exit.
func (m *makeRun) waitLine(sub string, within time.Duration) bool {
	timeout := time.After(within)
	for {
		select {
		case l := <-m.lines:
			if strings.Contains(l, sub) {
				return true
			}
		case <-m.exited:
			return strings.Contains(m.out.String(), sub)
		case <-timeout:
			return false
		}
	}
}

// interrupt is Ctrl-C: SIGINT to the whole foreground process group.
func (m *makeRun) interrupt() { syscall.Kill(-m.cmd.Process.Pid, syscall.SIGINT) }

// TestMakeRun: `make run` is a complete local builder: all its state in
// its run folder, the lines it prints register it and build on it with
// nothing else prepared, a second `make run` on the same port and prefix
// leaves the first alone, Ctrl-C waits for running sessions and a second
// Ctrl-C ends them at once, and the container it started is stopped.
func TestMakeRun(t *testing.T) {
	if _, err := exec.LookPath("darling"); err == nil {
		t.Skip("a real darling is installed: make run would use it")
	}
	base, err := os.MkdirTemp("", "dp")
	if err != nil {
		t.Fatal(err)
	}
	runDir, binDir := filepath.Join(base, "run"), filepath.Join(base, "bin")
	prefix := filepath.Join(runDir, "prefix")
	t.Cleanup(func() {
		shutdownStandin(prefix)
		os.RemoveAll(base)
	})
	port := strings.TrimPrefix(freeAddr(t), "127.0.0.1:")
	m := startMakeRun(t, runDir, binDir, port)
	if !m.waitLine("msg=listening", 5*time.Minute) {
		t.Fatalf("make run never listened:\n%s", m.out.String())
	}
	out := m.out.String()
	for _, want := range []string{"WARNING: NO DARLING INSTALLED", "STAND-IN LAUNCHER",
		binDir + "/darling-sshd register --state-dir " + runDir, binDir + "/darling-sshd check", "nix-build --no-out-link -E"} {
		if !strings.Contains(out, want) {
			t.Errorf("make run does not print %q:\n%s", want, out)
		}
	}
	for _, f := range []string{"client_key", "ssh_host_ed25519_key", "known_hosts", "status.sock", "prefix"} {
		if _, err := os.Stat(filepath.Join(runDir, f)); err != nil {
			t.Errorf("make run's %s: %v", f, err)
		}
	}
	kh, _ := os.ReadFile(filepath.Join(runDir, "known_hosts"))
	for _, name := range []string{"darling-builder ", "[127.0.0.1]:" + port + " ", "[localhost]:" + port + " "} {
		if !strings.Contains(string(kh), name) {
			t.Errorf("make run's known_hosts does not name %q:\n%s", name, kh)
		}
	}
	container := containerPidOf(prefix)

	// The printed lines, run as printed (in a view of the system paths).
	v := newSystemView(t)
	v.run(filepath.Join(binDir, "darling-sshd"), "register", "--state-dir", runDir)
	if out := v.run(filepath.Join(binDir, "darling-sshd"), "check"); strings.Count(out, "ok ") != 5 {
		t.Errorf("check after make run and register:\n%s", out)
	}
	tag := fmt.Sprint(rand.Int64())
	result := lastLine(v.run("nix-build", "--no-out-link", "-E",
		`derivation { name = "make-run-`+tag+`"; system = "x86_64-darwin"; builder = "/bin/sh"; args = [ "-c" "echo `+tag+` > $out" ]; }`))
	if b, err := os.ReadFile(result); err != nil || string(b) != tag+"\n" {
		t.Errorf("the remote build's result %s: %q %v", result, b, err)
	}

	// A second make run on the same port and prefix fails to listen and
	// leaves the first server's container and sessions alone.
	second := startMakeRun(t, runDir, binDir, port)
	<-second.exited
	if !strings.Contains(second.out.String(), "address already in use") {
		t.Errorf("the second make run did not fail on the busy port:\n%s", second.out.String())
	}
	if containerPidOf(prefix) != container || !alive(container) {
		t.Errorf("the second make run stopped the first one's container %d:\n%s", container, second.out.String())
	}

	// A session that outlives the first Ctrl-C; the second ends it.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	d := uniqueSleep()
	sess := v.cmd(ctx, "ssh", "darling-builder", "echo started; exec sleep "+d)
	sessOut, _ := sess.StdoutPipe()
	if err := sess.Start(); err != nil {
		t.Fatal(err)
	}
	defer sess.Wait()
	if line, _ := bufio.NewReader(sessOut).ReadString('\n'); line != "started\n" {
		t.Fatalf("session: %q\n%s", line, m.out.String())
	}
	m.interrupt()
	if !m.waitLine("waiting for running sessions", time.Minute) {
		t.Fatalf("no drain after the first Ctrl-C:\n%s", m.out.String())
	}
	select {
	case <-m.exited:
		t.Fatalf("make run exited at the first Ctrl-C with a session running:\n%s", m.out.String())
	default:
	}
	m.interrupt()
	// Well before the 30 s shutdown grace: the second Ctrl-C does not
	// wait for it.
	select {
	case <-m.exited:
	case <-time.After(20 * time.Second):
		t.Fatalf("make run still running after the second Ctrl-C:\n%s", m.out.String())
	}
	for _, want := range []string{"asked again to stop", "stopped the prefix's container this server had started"} {
		if !strings.Contains(m.out.String(), want) {
			t.Errorf("make run's output lacks %q:\n%s", want, m.out.String())
		}
	}
	if !waitFor(10*time.Second, func() bool { return !alive(container) && len(procsWithArgs("sleep", d)) == 0 }) {
		t.Errorf("after make run: container alive %v, session's sleep %v", alive(container), procsWithArgs("sleep", d))
	}
	if c, err := net.Dial("tcp", "127.0.0.1:"+port); err == nil {
		c.Close()
		t.Error("something still listens on make run's port")
	}
}
