// Package integration drives the built darling-sshd binary end to end with
// the real OpenSSH client, against the stand-in launcher test fixture in
// ./standin (Darling cannot be installed on test machines).
package integration

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/darling-sshd/darling-sshd/sshserver"
)

// bins holds the binaries TestMain builds.
var bins struct {
	server, standin string
}

func TestMain(m *testing.M) {
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "dsshd-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	bins.server = filepath.Join(dir, "darling-sshd")
	bins.standin = filepath.Join(dir, "darling-standin")
	// The server is built with the race detector: these tests are its
	// concurrency tests too. Benchmarks build it plain
	// (DARLING_SSHD_NORACE=1).
	race := []string{"-race"}
	if os.Getenv("DARLING_SSHD_NORACE") != "" {
		race = nil
	}
	for _, b := range [][]string{
		append(append([]string{"build"}, race...), "-o", bins.server, "../cmd/darling-sshd"),
		{"build", "-o", bins.standin, "./standin"},
	} {
		cmd := exec.Command("go", b...)
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			fmt.Fprintln(os.Stderr, "go", strings.Join(b, " "), err)
			return 1
		}
	}
	// go test's interrupt ends this process without running cleanups,
	// and the stand-in's containers, like Darling's, outlive whoever
	// started them: a Ctrl-C of make test or make bench shuts them down
	// here. (The servers go with their process group or this process.)
	interrupts := make(chan os.Signal, 1)
	signal.Notify(interrupts, os.Interrupt, syscall.SIGTERM)
	go func() {
		sig := <-interrupts
		fmt.Fprintf(os.Stderr, "integration: %v: shutting down the test containers\n", sig)
		leftovers.cleanUp()
		os.RemoveAll(dir)
		os.Exit(1)
	}()
	for _, tool := range []string{"ssh", "ssh-keygen"} {
		if _, err := exec.LookPath(tool); err != nil {
			fmt.Fprintf(os.Stderr, "%s is needed (make test installs openssh-client)\n", tool)
			return 1
		}
	}
	return m.Run()
}

// leftovers holds the temporary folders and prefixes the tests created and
// have not cleaned up yet, for an interrupt to clean up.
var leftovers tempFolders

type tempFolders struct {
	mu     sync.Mutex
	dirs   map[string]string // folder -> the prefix in it
	closed bool              // cleaned up for an interrupt
}

// mkdir creates a temporary folder, short enough for Darling's socket path
// limit, for the prefix named prefix in it (or elsewhere, if prefix is
// given), and returns what cleans them up: it shuts the prefix's container
// down and removes the folder. Once an interrupt has cleaned up, it never
// returns: the process is exiting.
func (f *tempFolders) mkdir(prefix string) (dir, prefixPath string, cleanUp func(), err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		select {}
	}
	dir, err = os.MkdirTemp("", "dp")
	if err != nil {
		return "", "", nil, err
	}
	if prefix == "" {
		prefix = filepath.Join(dir, "p")
	}
	if f.dirs == nil {
		f.dirs = map[string]string{}
	}
	f.dirs[dir] = prefix
	return dir, prefix, func() {
		shutdownStandin(prefix)
		os.RemoveAll(dir)
		f.mu.Lock()
		delete(f.dirs, dir)
		f.mu.Unlock()
	}, nil
}

// cleanUp shuts down the prefixes' containers and removes the folders,
// for good.
func (f *tempFolders) cleanUp() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed = true
	for dir, prefix := range f.dirs {
		shutdownStandin(prefix)
		os.RemoveAll(dir)
	}
}

// server is one darling-sshd process under test, with its own keys,
// prefix and ssh config.
type server struct {
	t         *testing.T
	dir       string // short temp dir: Darling's socket path limit
	prefix    string
	addr      string
	port      string
	sshConfig string
	clientKey string
	hostKey   string
	cmd       *exec.Cmd
	exited    chan struct{}
	log       syncBuffer
	removeDir func() // shuts the prefix's container down, removes dir
}

type serverOpt struct {
	prefix string     // the prefix to serve, if not a fresh one
	args   []string   // extra serve flags
	env    []string   // extra server environment
	files  []*os.File // inherited from fd 3 on, without close-on-exec
	// ownSession starts the server in a session of its own, as systemd
	// starts a service. With the scheduler's autogroups (Debian's
	// default), CPU time is shared out between sessions first: the
	// benchmark's server must not share one with its busy processes and
	// clients, as sshd's per-connection processes, which call setsid(2),
	// do not.
	ownSession bool
}

// syncBuffer is a bytes.Buffer safe for one writer and many readers.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// run runs a command and fails the test if it fails.
func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// newKey makes an ed25519 key pair and returns the private key's path.
func newKey(t *testing.T, dir, name string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	run(t, "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", p)
	return p
}

// parseEnv reads the output of env into a map.
func parseEnv(out []byte) map[string]string {
	env := map[string]string{}
	for _, l := range strings.Split(string(out), "\n") {
		if k, v, ok := strings.Cut(l, "="); ok {
			env[k] = v
		}
	}
	return env
}

// standin returns the stand-in launcher run as upstream Darling is: the
// prefix as DPREFIX, HOME set, nothing else of ours in its environment.
func standin(prefix string, args ...string) *exec.Cmd {
	cmd := exec.Command(bins.standin, args...)
	cmd.Env = []string{"DPREFIX=" + prefix, "HOME=/root", "PATH=/usr/bin:/bin"}
	return cmd
}

// shutdownStandin shuts the prefix's container down, if it runs, and waits
// until it is gone: like Darling's, the stand-in's shutdown SIGKILLs it and
// returns at once.
func shutdownStandin(prefix string) {
	pid := containerPidOf(prefix)
	// Bounded: like Darling's, the stand-in opens .init.pid blocking, and
	// a test may leave a FIFO there.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bins.standin, "shutdown")
	cmd.Env = standin(prefix).Env
	cmd.Run()
	if pid > 0 {
		// Gone, not a zombie: Darling's launcher takes a zombie for a
		// running container.
		waitFor(10*time.Second, func() bool {
			_, err := os.Stat("/proc/" + strconv.Itoa(pid))
			return err != nil
		})
	}
}

// prefixView returns a path of the prefix as its processes see it:
// through the container's mount namespace, where Darling (and the
// stand-in) mount an overlay at the prefix. The prefix folder on the host
// holds only the overlay's upper layer, not to be changed behind it.
func prefixView(t *testing.T, prefix, p string) string {
	t.Helper()
	pid := containerPidOf(prefix)
	if pid == 0 {
		t.Fatalf("no container for the prefix %s", prefix)
	}
	return filepath.Join("/proc", strconv.Itoa(pid), "root", prefix, p)
}

// containerPidOf returns the pid in the prefix's .init.pid, or 0.
func containerPidOf(prefix string) int {
	b, _ := os.ReadFile(filepath.Join(prefix, ".init.pid"))
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid
}

// alive reports whether pid is a live (not zombie) process.
func alive(pid int) bool {
	st, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	i := bytes.LastIndexByte(st, ')')
	return err == nil && i > 0 && i+2 < len(st) && st[i+2] != 'Z'
}

// tempPrefix returns a prefix path that does not exist yet, short enough
// for Darling's socket path limit; its container is shut down and its
// folder removed after the test.
func tempPrefix(t *testing.T) string {
	t.Helper()
	_, prefix, cleanUp, err := leftovers.mkdir("")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cleanUp)
	return prefix
}

// startServer starts darling-sshd on a free loopback port with a fresh
// (cold, not yet created) prefix, and waits for its "listening" line.
func startServer(t *testing.T, o serverOpt) *server {
	t.Helper()
	dir, prefix, removeDir, err := leftovers.mkdir(o.prefix)
	if err != nil {
		t.Fatal(err)
	}
	s := &server{t: t, dir: dir, prefix: prefix, exited: make(chan struct{}), removeDir: removeDir}
	t.Cleanup(s.cleanup)
	s.clientKey = newKey(t, dir, "id_client")
	s.hostKey = filepath.Join(dir, "hostkey", "ssh_host_ed25519_key")
	args := append([]string{"serve",
		"--listen", "127.0.0.1:0",
		"--prefix", s.prefix,
		"--darling", bins.standin,
		"--host-key", s.hostKey,
		"--authorized-keys", s.clientKey + ".pub",
		"--kill-grace", killGrace.String(),
		"--known-hosts-out", filepath.Join(dir, "known_hosts_out"),
		"--state-dir", filepath.Join(dir, "state"), // status.sock: one per server
		"--shutdown-grace", "1s",
		"--log-level", "debug",
	}, o.args...)
	s.cmd = exec.Command(bins.server, args...)
	s.cmd.Env = append([]string{"HOME=/root", "PATH=" + os.Getenv("PATH"), noRaceExitSleep}, o.env...)
	s.cmd.ExtraFiles = o.files
	if o.ownSession {
		// Out of the test's process group, a Ctrl-C no longer reaches
		// it: it goes when the test process does.
		s.cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Pdeathsig: syscall.SIGTERM}
	}
	stderr, err := s.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ready := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			line := sc.Text()
			fmt.Fprintln(&s.log, line)
			if strings.Contains(line, "msg=listening") {
				for _, f := range strings.Fields(line) {
					if a, ok := strings.CutPrefix(f, "addr="); ok {
						ready <- a
					}
				}
			}
		}
		s.cmd.Wait()
		close(s.exited)
	}()
	select {
	case s.addr = <-ready:
	case <-s.exited:
		t.Fatalf("server exited before listening:\n%s", s.log.String())
	case <-time.After(2 * time.Minute):
		t.Fatalf("server not listening:\n%s", s.log.String())
	}
	_, s.port, _ = strings.Cut(s.addr, ":")
	s.writeSSHConfig(s.clientKey)
	s.awaitPool()
	return s
}

// awaitPool waits until the server's pool of launchers started ahead
// (--prespawn, 2 by default) is ready, so that a test's first exec
// session is a pooled one: every exec test runs with the pool on. A
// server without a running container (a test's launcher that cannot
// start one) has no pool to wait for.
func (s *server) awaitPool() {
	s.t.Helper()
	var st sshserver.Status
	if !waitFor(time.Minute, func() bool {
		raw, err := s.status("--json")
		st = sshserver.Status{}
		if err != nil || json.Unmarshal([]byte(raw), &st) != nil {
			return false
		}
		return st.Pool.Ready >= st.Pool.Size || st.Container.Pid == 0
	}) {
		s.t.Fatalf("the pool of launchers started ahead never filled: %+v\n%s", st.Pool, s.log.String())
	}
	if st.Container.Pid == 0 {
		s.t.Logf("no container verified for the prefix: this test's sessions start their own launchers")
	}
}

// serveFails runs darling-sshd serve on a fresh prefix with the stand-in
// and extra flags, expects it to refuse to start (status 1) and returns
// what it printed.
func serveFails(t *testing.T, extra ...string) string {
	t.Helper()
	prefix := tempPrefix(t)
	dir := filepath.Dir(prefix)
	key := newKey(t, dir, "id")
	args := append([]string{"serve", "--listen", "127.0.0.1:0", "--prefix", prefix, "--darling", bins.standin,
		"--host-key", filepath.Join(dir, "hk"), "--authorized-keys", key + ".pub", "--known-hosts-out", "", "--state-dir", filepath.Join(dir, "state"),
		"--warm-timeout", "30s"}, extra...)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bins.server, args...)
	cmd.Env = []string{"HOME=/root", "PATH=" + os.Getenv("PATH"), noRaceExitSleep}
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 {
		t.Fatalf("serve %v: want status 1, got %v\n%s", extra, err, out)
	}
	return string(out)
}

// writeSSHConfig writes an ssh -F config for host "dut" that pins the
// server's host key.
func (s *server) writeSSHConfig(identity string) {
	t := s.t
	hk := exec.Command(bins.server, "hostkey", "--host-key", s.hostKey)
	hk.Env = append(os.Environ(), noRaceExitSleep)
	pub, err := hk.Output()
	if err != nil {
		t.Fatalf("hostkey: %v", err)
	}
	kh := filepath.Join(s.dir, "known_hosts")
	if err := os.WriteFile(kh, []byte("dut "+string(pub)), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := fmt.Sprintf(`Host dut
  HostName 127.0.0.1
  Port %s
  User root
  IdentityFile %s
  IdentitiesOnly yes
  HostKeyAlias dut
  UserKnownHostsFile %s
  GlobalKnownHostsFile /dev/null
  StrictHostKeyChecking yes
  BatchMode yes
  LogLevel ERROR
  ControlMaster no
  ControlPath none
`, s.port, identity, kh)
	s.sshConfig = filepath.Join(s.dir, "ssh_config")
	if err := os.WriteFile(s.sshConfig, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
}

// ssh returns the real OpenSSH client running command on the server.
func (s *server) ssh(ctx context.Context, extra ...string) *exec.Cmd {
	args := append([]string{"-F", s.sshConfig}, extra...)
	return exec.CommandContext(ctx, "ssh", args...)
}

// result is a finished ssh run.
type result struct {
	stdout, stderr string
	code           int
}

// exec runs command through ssh with stdin and returns its outputs.
func (s *server) exec(command string, stdin string) result {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := s.ssh(ctx, "dut", "--", command)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if ctx.Err() != nil {
		s.t.Fatalf("ssh %q did not finish: stdout %q stderr %q\nserver log:\n%s", command, out.String(), errb.String(), s.log.String())
	}
	if _, ok := err.(*exec.ExitError); err != nil && !ok {
		s.t.Fatalf("ssh %q: %v", command, err)
	}
	return result{out.String(), errb.String(), cmd.ProcessState.ExitCode()}
}

// logged reports whether the server logged sub, waiting a little: the log
// comes through a pipe, behind what the client already saw.
func (s *server) logged(sub string) bool {
	return waitFor(10*time.Second, func() bool { return strings.Contains(s.log.String(), sub) })
}

// stop sends SIGTERM and waits for the server to exit.
func (s *server) stop() {
	if s.cmd.Process == nil {
		return
	}
	select {
	case <-s.exited:
		return
	default:
	}
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exited:
	case <-time.After(30 * time.Second):
		s.cmd.Process.Kill()
		<-s.exited
		s.t.Errorf("server did not stop on SIGTERM:\n%s", s.log.String())
	}
}

func (s *server) cleanup() {
	s.stop()
	if strings.Contains(s.log.String(), "WARNING: DATA RACE") {
		s.t.Error("the race detector found a data race in the server")
	}
	if s.t.Failed() {
		s.t.Logf("server log:\n%s", s.log.String())
	}
	s.removeDir() // and shuts the prefix's container down
}

// noRaceExitSleep stops the race-enabled server binary from sleeping a
// second at exit.
const noRaceExitSleep = "GORACE=atexit_sleep_ms=0"

// killGrace is the servers' --kill-grace in these tests.
const killGrace = 2 * time.Second

// procsWithArgs returns the live (not zombie) processes whose command
// line is exactly argv.
func procsWithArgs(argv ...string) []int {
	want := strings.Join(argv, "\x00") + "\x00"
	return procsMatching(func(cl string) bool { return cl == want })
}

// waitFor polls cond until it holds or the timeout passes; it reports
// whether it held. Polling is the signal here: process death in another
// PID namespace has no event we can wait on.
func waitFor(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// procsMatching returns the live (not zombie) processes whose
// NUL-separated command line satisfies match.
func procsMatching(match func(cmdline string) bool) []int {
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cl, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err != nil || !match(string(cl)) {
			continue
		}
		if !alive(pid) {
			continue
		}
		pids = append(pids, pid)
	}
	return pids
}

func killPid(pid int) error { return syscall.Kill(pid, syscall.SIGKILL) }
