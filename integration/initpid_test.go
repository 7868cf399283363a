package integration

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// P/.init.pid lies in the prefix: every session can write it (it is
// /.init.pid in the session's view). These tests are the attacks on it
// that the server must withstand.

// TestInitPidNamesSessionProcess: a session starts a process named
// darlingserver, writes its pid into /.init.pid and plants a symlink to /
// where the prefix would be under that process's root. Then the real
// darlingserver dies (its launchd, and the session, live on), so the
// server must read .init.pid again. A server that trusted it would serve
// the host's / over SFTP.
func TestInitPidNamesSessionProcess(t *testing.T) {
	s := startServer(t, serverOpt{})
	secret := filepath.Join(s.dir, "host-secret")
	if err := os.WriteFile(secret, []byte("host only\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	genuine := containerPidOf(s.prefix)
	if genuine == 0 {
		t.Fatal("no container")
	}
	launchd := launchdOf(t, genuine)
	// Killing launchd ends its PID namespace: every process of the prefix.
	defer syscall.Kill(launchd, syscall.SIGKILL)
	d := uniqueSleep()
	ctx, cancel := context.WithCancel(context.Background())
	fake := s.ssh(ctx, "dut", "cp /bin/sleep /private/tmp/darlingserver && mkdir -p "+filepath.Dir(s.prefix)+
		" && ln -s / "+s.prefix+" && exec /private/tmp/darlingserver "+d)
	if err := fake.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cancel()
		fake.Wait()
	}()
	var pid int
	if !waitFor(time.Minute, func() bool {
		pids := procsWithArgs("/private/tmp/darlingserver", d)
		if len(pids) == 1 {
			pid = pids[0]
		}
		return pid != 0
	}) {
		t.Fatal("the session's darlingserver never started")
	}
	if r := s.exec("printf %s "+strconv.Itoa(pid)+" > /.init.pid", ""); r.code != 0 {
		t.Fatalf("write /.init.pid: %+v", r)
	}
	syscall.Kill(genuine, syscall.SIGKILL)
	if !waitFor(10*time.Second, func() bool { return !alive(genuine) }) {
		t.Fatal("darlingserver survived SIGKILL")
	}
	got := filepath.Join(s.dir, "got")
	out, _ := s.sftpBatch(t, "get "+secret+" "+got+"\nls /\n")
	if b, err := os.ReadFile(got); err == nil {
		t.Fatalf("SFTP served the host's %s (%q) through a planted .init.pid:\n%s", secret, b, out)
	}
	if !s.logged("not taking the process .init.pid names") {
		t.Error("the refused .init.pid was not logged")
	}
}

// TestInitPidFIFO: a session replaces /.init.pid with a FIFO. Reading it
// would block for ever; Darling's launcher, which opens it so, would hang
// every later session. The server reads it without blocking and puts the
// container's pid back, so later sessions and SFTP work.
func TestInitPidFIFO(t *testing.T) {
	s := startServer(t, serverOpt{})
	want := containerPidOf(s.prefix)
	if r := s.exec("for i in 1 2 3 4 5 6 7 8; do rm -f /.init.pid; mkfifo /.init.pid 2>/dev/null && break; done; ls -l /.init.pid", ""); r.code != 0 || !strings.HasPrefix(r.stdout, "p") {
		t.Fatalf("plant a FIFO: %+v", r)
	}
	for i := range 3 {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		out, err := s.ssh(ctx, "dut", "echo alive").Output()
		cancel()
		if err != nil || string(out) != "alive\n" {
			t.Fatalf("session %d after the FIFO: %v %q\n%s", i, err, out, s.log.String())
		}
	}
	var st unix.Stat_t
	if err := unix.Lstat(filepath.Join(s.prefix, ".init.pid"), &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
		t.Errorf(".init.pid is not a regular file again: %v %#o", err, st.Mode&unix.S_IFMT)
	}
	if got := containerPidOf(s.prefix); got != want {
		t.Errorf(".init.pid names %d, want the container %d", got, want)
	}
	if out, err := s.sftpBatch(t, "ls /\n"); err != nil || !strings.Contains(out, "Users") {
		t.Errorf("sftp after the FIFO: %v %s", err, out)
	}
}

// TestInitPidStale: after a reboot, .init.pid names an unrelated process
// (here one in a mount namespace of its own). Taking it for the container,
// the server would skip the warm-up; the launcher would then cold-start
// the container with a session's stdout, which it holds for ever (the
// session never ends), and with the session's marker, so ending the
// session would kill it. The server must warm the prefix instead.
func TestInitPidStale(t *testing.T) {
	s := startServer(t, serverOpt{})
	shutdownStandin(s.prefix)
	other := exec.Command("unshare", "--mount", "sleep", uniqueSleep())
	if err := other.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		other.Process.Kill()
		other.Wait()
	}()
	if !waitFor(10*time.Second, func() bool {
		ns, _ := os.Readlink("/proc/" + strconv.Itoa(other.Process.Pid) + "/ns/mnt")
		self, _ := os.Readlink("/proc/self/ns/mnt")
		return ns != "" && ns != self
	}) {
		t.Fatal("unshare never entered its own mount namespace")
	}
	if err := os.WriteFile(filepath.Join(s.prefix, ".init.pid"), []byte(strconv.Itoa(other.Process.Pid)), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, word := range []string{"first", "second"} {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		out, err := s.ssh(ctx, "dut", "echo "+word).Output()
		cancel()
		if err != nil || string(out) != word+"\n" {
			t.Fatalf("%s session with a stale .init.pid: %v %q", word, err, out)
		}
	}
	pid := containerPidOf(s.prefix)
	if pid == other.Process.Pid || pid == 0 {
		t.Fatalf(".init.pid names %d after the warm-up", pid)
	}
	comm, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/comm")
	if strings.TrimSpace(string(comm)) != "darlingserver" {
		t.Errorf("the container %d is gone after two sessions (%q)", pid, comm)
	}
	if n := strings.Count(s.log.String(), `msg="prefix warm"`); n != 2 {
		t.Errorf("prefix warmed %d times, want 2 (start, after the stale pid)", n)
	}
}
