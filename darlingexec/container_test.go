package darlingexec

import (
	"bufio"
	"io"
	"log/slog"
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

// fakeContainer starts what verifyContainer takes for the prefix's
// darlingserver: a process named darlingserver, in a mount namespace of its
// own with an overlay mounted at prefix (created here), its pid in
// prefix/.init.pid. It needs root, as Darling does.
func fakeContainer(t *testing.T, prefix string) *exec.Cmd {
	t.Helper()
	return startNamed(t, prefix, "darlingserver", true)
}

// overlayParts makes the folders an overlay at prefix needs (prefix,
// prefix.workdir and a lower layer beside it) and a copy of sleep named
// name, whose processes' comm is name. It needs root, as Darling does.
func overlayParts(t *testing.T, prefix, name string) (lower, bin string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root, to mount an overlay as Darling does")
	}
	dir := filepath.Dir(prefix)
	lower = filepath.Join(dir, "lower")
	for _, d := range []string{prefix, prefix + ".workdir", lower} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	bin = filepath.Join(dir, name)
	if _, err := os.Stat(bin); err == nil {
		return lower, bin // made for another process, which may be running it
	}
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Fatal(err)
	}
	if err := exec.Command("cp", sleep, bin).Run(); err != nil {
		t.Fatal(err)
	}
	return lower, bin
}

// startNamed starts a sleeping process whose comm is name, in a mount
// namespace of its own, with an overlay at prefix if overlay is set, and
// writes its pid into prefix/.init.pid.
func startNamed(t *testing.T, prefix, name string, overlay bool) *exec.Cmd {
	t.Helper()
	lower, bin := overlayParts(t, prefix, name)
	script := ""
	if overlay {
		script = "mount -t overlay overlay -o lowerdir=" + lower + ",upperdir=" + prefix + ",workdir=" + prefix + ".workdir,index=off " + prefix + " || exit 1; "
	}
	script += "echo ready; exec " + bin + " 1000"
	cmd := exec.Command("unshare", "--mount", "--propagation", "private", "sh", "-c", script)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	line, _ := bufio.NewReader(out).ReadString('\n')
	if line != "ready\n" {
		t.Fatalf("fake container did not start: %q", line)
	}
	// "ready" comes just before the exec: wait until it has happened.
	for deadline := time.Now().Add(10 * time.Second); ; {
		comm, _ := os.ReadFile("/proc/" + strconv.Itoa(cmd.Process.Pid) + "/comm")
		if strings.TrimSpace(string(comm)) == name {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("fake container never became %s", name)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := os.WriteFile(filepath.Join(prefix, ".init.pid"), []byte(strconv.Itoa(cmd.Process.Pid)), 0o644); err != nil {
		t.Fatal(err)
	}
	return cmd
}

func testLauncher(prefix string) *Launcher {
	return &Launcher{Prefix: prefix, Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
}

func TestContainerVerified(t *testing.T) {
	prefix := filepath.Join(t.TempDir(), "p")
	c := fakeContainer(t, prefix)
	l := testLauncher(prefix)
	if got := l.containerPid(); got != c.Process.Pid {
		t.Fatalf("containerPid = %d, want %d", got, c.Process.Pid)
	}
	fd, via, err := l.openView()
	if err != nil || !via {
		t.Fatalf("openView: %v (via container %v)", err, via)
	}
	unix.Close(fd)
}

// TestContainerRefused: what .init.pid names is not taken for the
// container unless it is one: a process with another name, a
// darlingserver with nothing mounted at the prefix (a stale pid after a
// reboot, a session's own process), garbage, a FIFO (read without blocking) or a
// symlink.
func TestContainerRefused(t *testing.T) {
	for _, tc := range []struct {
		name    string
		setup   func(t *testing.T, prefix string)
		overlay bool
	}{
		{name: "other process", setup: func(t *testing.T, prefix string) { startNamed(t, prefix, "sleeper", true) }},
		{name: "nothing mounted", setup: func(t *testing.T, prefix string) { startNamed(t, prefix, "darlingserver", false) }},
		{name: "started by a session", setup: func(t *testing.T, prefix string) {
			t.Setenv(SessionVar, "0123456789abcdef01234567")
			startNamed(t, prefix, "darlingserver", true)
		}},
		{name: "our own pid", setup: func(t *testing.T, prefix string) {
			os.MkdirAll(prefix, 0o755)
			os.WriteFile(filepath.Join(prefix, ".init.pid"), []byte(strconv.Itoa(os.Getpid())), 0o644)
		}},
		{name: "garbage", setup: func(t *testing.T, prefix string) {
			os.MkdirAll(prefix, 0o755)
			os.WriteFile(filepath.Join(prefix, ".init.pid"), []byte(strings.Repeat("9", 4096)), 0o644)
		}},
		{name: "fifo", setup: func(t *testing.T, prefix string) {
			os.MkdirAll(prefix, 0o755)
			if err := unix.Mkfifo(filepath.Join(prefix, ".init.pid"), 0o644); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			prefix := filepath.Join(t.TempDir(), "p")
			tc.setup(t, prefix)
			done := make(chan int, 1)
			go func() { done <- testLauncher(prefix).containerPid() }()
			select {
			case pid := <-done:
				if pid != 0 {
					t.Errorf("took pid %d for the container", pid)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("containerPid blocked")
			}
		})
	}
}

// TestContainerSymlinkedPidFile: a symlink at .init.pid is not followed,
// even to the real container's pid.
func TestContainerSymlinkedPidFile(t *testing.T) {
	prefix := filepath.Join(t.TempDir(), "p")
	fakeContainer(t, prefix)
	pidFile := filepath.Join(prefix, ".init.pid")
	real := filepath.Join(filepath.Dir(prefix), "real.pid")
	os.Rename(pidFile, real)
	if err := os.Symlink(real, pidFile); err != nil {
		t.Fatal(err)
	}
	if pid := testLauncher(prefix).containerPid(); pid != 0 {
		t.Errorf("followed a symlinked .init.pid to pid %d", pid)
	}
}

// TestRepairInitPid: once the container is verified, a .init.pid a session
// replaced (another pid, a FIFO) is put back, so that Darling's own
// launcher, which opens it blocking, neither hangs nor starts a second
// container.
func TestRepairInitPid(t *testing.T) {
	prefix := filepath.Join(t.TempDir(), "p")
	c := fakeContainer(t, prefix)
	l := testLauncher(prefix)
	if l.containerPid() != c.Process.Pid {
		t.Fatal("container not verified")
	}
	pidFile := filepath.Join(prefix, ".init.pid")
	for _, plant := range []func() error{
		func() error { return os.WriteFile(pidFile, []byte("1"), 0o644) },
		func() error { os.Remove(pidFile); return unix.Mkfifo(pidFile, 0o644) },
	} {
		if err := plant(); err != nil {
			t.Fatal(err)
		}
		l.repairInitPid(l.containerPid())
		var st unix.Stat_t
		b, err := os.ReadFile(pidFile)
		if err != nil || string(b) != strconv.Itoa(c.Process.Pid) || unix.Lstat(pidFile, &st) != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
			t.Errorf(".init.pid after repair: %q %v", b, err)
		}
	}
	// A reused pid is never the container: it died, and it is forgotten.
	c.Process.Signal(syscall.SIGKILL)
	c.Wait()
	if pid := l.containerPid(); pid != 0 {
		t.Errorf("a dead container still answers: %d", pid)
	}
}

func TestUnescapeMountinfo(t *testing.T) {
	for in, want := range map[string]string{
		`/a\040b`:  "/a b",
		`/plain`:   "/plain",
		`/x\134y`:  `/x\y`,
		`/trail\0`: `/trail\0`,
	} {
		if got := unescapeMountinfo(in); got != want {
			t.Errorf("unescapeMountinfo(%q) = %q, want %q", in, got, want)
		}
	}
}

// startInPIDNamespace starts, in a new PID and mount namespace with an
// overlay at prefix, a process named darlingserver: as that namespace's
// pid 1 (its parent, unshare, lives in ours: how a stand-in may start its
// container) or as a child of the namespace's pid 1 (as a session's
// process is a descendant of launchd). It writes its host pid into
// prefix/.init.pid.
func startInPIDNamespace(t *testing.T, prefix string, asChild bool) {
	t.Helper()
	lower, bin := overlayParts(t, prefix, "darlingserver")
	arg := strconv.Itoa(100000 + os.Getpid()%800000)
	run := "exec " + bin + " " + arg
	if asChild {
		run = bin + " " + arg + " & wait"
	}
	cmd := exec.Command("unshare", "--pid", "--kill-child", "--mount", "--propagation", "private", "sh", "-c",
		"mount -t overlay overlay -o lowerdir="+lower+",upperdir="+prefix+",workdir="+prefix+".workdir "+prefix+" && "+run)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill() // unshare: its child, pid 1 of the namespace, and all in it die
		cmd.Wait()
	})
	var pid int
	for deadline := time.Now().Add(10 * time.Second); pid == 0; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no darlingserver in a PID namespace")
		}
		ents, _ := os.ReadDir("/proc")
		for _, e := range ents {
			b, _ := os.ReadFile("/proc/" + e.Name() + "/cmdline")
			if string(b) == bin+"\x00"+arg+"\x00" {
				pid, _ = strconv.Atoi(e.Name())
			}
		}
	}
	if err := os.WriteFile(filepath.Join(prefix, ".init.pid"), []byte(strconv.Itoa(pid)), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestContainerPIDNamespace: a container that is pid 1 of a PID namespace
// of its own is taken (its parent lives in ours); a process inside that
// namespace, as a session's processes are, is not, whatever its name.
func TestContainerPIDNamespace(t *testing.T) {
	prefix := filepath.Join(t.TempDir(), "p")
	startInPIDNamespace(t, prefix, false)
	if pid := testLauncher(prefix).containerPid(); pid == 0 {
		t.Error("a darlingserver that is pid 1 of its own PID namespace was refused")
	}
	prefix = filepath.Join(t.TempDir(), "p")
	startInPIDNamespace(t, prefix, true)
	if pid := testLauncher(prefix).containerPid(); pid != 0 {
		t.Errorf("took %d, a process of another PID namespace, for the container", pid)
	}
}
