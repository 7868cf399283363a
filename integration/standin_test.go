package integration

// Tests of the stand-in launcher itself (integration/standin): each checks
// one way in which upstream Darling is strict, driving the stand-in binary
// directly with DPREFIX, as darling-sshd does.

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/creack/pty"
	"golang.org/x/sys/unix"
)

// standinProfileLine is what the stand-in's system root /etc/profile prints.
const standinProfileLine = "darling-standin: /etc/profile ran (Darling's runs path_helper)"

const standinWrapperEnv = "DARLING_STANDIN_WRAPPER"

// standinPrefix returns a prefix path that does not exist yet (tempPrefix),
// whose container, if any, is shut down and waited for at the end of the
// test, with a check that no process is left that names the prefix.
func standinPrefix(t *testing.T) string {
	t.Helper()
	prefix := tempPrefix(t)
	t.Cleanup(func() { stopContainer(t, prefix) })
	return prefix
}

// warm starts prefix's container with its stdio on /dev/null, so that it
// holds none of a later command's pipes.
func warm(t *testing.T, prefix string) {
	t.Helper()
	if err := standin(prefix, "shell", "true").Run(); err != nil {
		t.Fatalf("cold start: %v", err)
	}
	if running(prefix) == 0 {
		t.Fatalf("no darlingserver in %s/.init.pid after a cold start", prefix)
	}
}

// running returns the pid in P/.init.pid if it is a live (not zombie)
// darlingserver, else 0.
func running(prefix string) int {
	pid := containerPidOf(prefix)
	if pid == 0 {
		return 0
	}
	comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	if string(comm) != "darlingserver\n" || !alive(pid) {
		return 0
	}
	return pid
}

func launchdOf(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b))
	if len(f) != 1 {
		t.Fatalf("darlingserver %d has children %q, want launchd alone", pid, b)
	}
	l, _ := strconv.Atoi(f[0])
	return l
}

// waitGone waits (pidfd, no polling) until the processes have exited.
func waitGone(t *testing.T, pids ...int) {
	t.Helper()
	for _, pid := range pids {
		fd, err := unix.PidfdOpen(pid, 0)
		if err != nil {
			continue // already gone
		}
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		for {
			n, err := unix.Poll(pfd, 20000)
			if err == unix.EINTR {
				continue
			}
			if n != 1 {
				t.Errorf("process %d did not exit: %v", pid, err)
			}
			break
		}
		unix.Close(fd)
	}
}

// stopContainer shuts prefix's container down, waits for darlingserver and
// launchd to exit, and checks that no process names the prefix.
func stopContainer(t *testing.T, prefix string) {
	t.Helper()
	if pid := running(prefix); pid != 0 {
		launchd := launchdOf(t, pid)
		if out, err := standin(prefix, "shutdown").CombinedOutput(); err != nil {
			t.Errorf("shutdown: %v\n%s", err, out)
		}
		waitGone(t, pid, launchd)
	}
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		if b, err := os.ReadFile(p); err == nil && bytes.Contains(b, []byte(prefix+"\x00")) {
			t.Errorf("left behind: %s %q", p, b)
		}
	}
}

func exitCode(t *testing.T, err error) int {
	t.Helper()
	var ee *exec.ExitError
	if err == nil {
		return 0
	}
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	t.Fatal(err)
	return -1
}

// waitTimeout waits for cmd, or kills it after d: a failure, not a hang.
func waitTimeout(cmd *exec.Cmd, d time.Duration) error {
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return err
	case <-time.After(d):
		cmd.Process.Kill()
		<-done
		return fmt.Errorf("%s did not exit within %v", cmd, d)
	}
}

// tempFile is an unlinked file for a command's output: unlike a pipe it
// does not keep Wait waiting for a container that holds it.
func tempFile(t *testing.T) *os.File {
	t.Helper()
	f, err := os.CreateTemp("", "standin-out")
	if err != nil {
		t.Fatal(err)
	}
	os.Remove(f.Name())
	t.Cleanup(func() { f.Close() })
	return f
}

func contents(t *testing.T, f *os.File) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/self/fd/%d", f.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// Upstream has no --prefix option: darling.c sets up the DPREFIX prefix,
// reports the unknown option, starts the container and only then finds
// that argv[1] is no command. Wrapper mode takes a leading --prefix P.
func TestStandinNoPrefixOption(t *testing.T) {
	prefix := standinPrefix(t)
	other := filepath.Join(filepath.Dir(prefix), "q")
	t.Cleanup(func() { stopContainer(t, other) })
	stdout, stderr := tempFile(t), tempFile(t)
	cmd := standin(prefix, "--prefix", other, "shell", "true")
	cmd.Dir = filepath.Dir(prefix) // where no file is named --prefix
	cmd.Stdout, cmd.Stderr = stdout, stderr
	if code := exitCode(t, cmd.Run()); code != 1 {
		t.Fatalf("exit %d, want 1", code)
	}
	if got, want := contents(t, stdout), "'--prefix' is not a supported command or a file.\n"; got != want {
		t.Errorf("stdout %q, want %q", got, want)
	}
	wantErr := "Setting up a new Darling prefix at " + prefix + "\n" + bins.standin + ": unrecognized option '--prefix'\n"
	if got := contents(t, stderr); got != wantErr {
		t.Errorf("stderr %q, want %q", got, wantErr)
	}
	if running(prefix) == 0 {
		t.Errorf("no container for the DPREFIX prefix: upstream starts it before looking at argv[1]")
	}
	if _, err := os.Lstat(other); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("--prefix %s was used: %v", other, err)
	}

	// A cold start of other: its container keeps stdout, so not a pipe.
	cmd = standin(prefix, "--prefix", other, "shell", "echo", "hi")
	cmd.Env = append(cmd.Env, standinWrapperEnv+"=1")
	stdout = tempFile(t)
	cmd.Stdout = stdout
	if err := cmd.Run(); err != nil {
		t.Fatalf("wrapper mode: %v", err)
	}
	if out, want := contents(t, stdout), standinProfileLine+"\nhi\n"; out != want {
		t.Errorf("wrapper mode: stdout %q, want %q", out, want)
	}
	if running(other) == 0 {
		t.Errorf("wrapper mode did not start a container for %s", other)
	}
}

// The command's environment is the caller's less DPREFIX, with PATH,
// TMPDIR and HOME forced; bytes that are not UTF-8 pass unchanged, in the
// environment and in the arguments.
func TestStandinEnvironmentAndBytes(t *testing.T) {
	prefix := standinPrefix(t)
	warm(t, prefix)
	u, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	cmd := standin(prefix, "exec", "/usr/bin/env", "-0")
	cmd.Env = []string{"FOO=bar", "PATH=/usr/bin:/bin", "DPREFIX=" + prefix, "ODD=\xff\xfe\x80", "TMPDIR=/elsewhere", "HOME=/root", "LANG=C"}
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("exec env: %v", err)
	}
	want := []string{
		"PATH=/usr/bin:/bin:/usr/sbin:/sbin:/usr/local/bin", "TMPDIR=/private/tmp", "HOME=/Users/" + u.Username,
		"FOO=bar", "ODD=\xff\xfe\x80", "LANG=C",
	}
	if got := strings.Split(strings.TrimSuffix(string(out), "\x00"), "\x00"); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("environment\n%q\nwant\n%q", got, want)
	}

	arg := "a\xff'b\xc3(\x01"
	out, err = standin(prefix, "shell", "printf", "%s", arg).Output()
	if err != nil {
		t.Fatalf("shell printf: %v", err)
	}
	if want := standinProfileLine + "\n" + arg; string(out) != want {
		t.Errorf("stdout %q, want %q", out, want)
	}
}

// The container: darlingserver, the caller's uid, its own mount namespace
// with the overlay at P; the host sees only the upper layer. A cold start
// hands it the caller's stdout, kept until shutdown, and says
// "Bootstrapping…" only on a terminal.
func TestStandinContainer(t *testing.T) {
	prefix := standinPrefix(t)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	stderr := tempFile(t)
	cmd := standin(prefix, "shell", "true")
	cmd.Stdout, cmd.Stderr = w, stderr
	err = cmd.Run()
	w.Close()
	if err != nil {
		t.Fatalf("cold start: %v", err)
	}
	if got, want := contents(t, stderr), "Setting up a new Darling prefix at "+prefix+"\n"; got != want {
		t.Errorf("stderr %q, want %q", got, want)
	}
	raw, err := os.ReadFile(filepath.Join(prefix, ".init.pid"))
	if err != nil {
		t.Fatal(err)
	}
	if len(raw) == 0 || raw[len(raw)-1] < '0' || raw[len(raw)-1] > '9' {
		t.Errorf(".init.pid %q: want the pid without a newline", raw)
	}
	pid := running(prefix)
	if pid == 0 {
		t.Fatalf(".init.pid %q is no running darlingserver", raw)
	}
	status, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, want := range []string{
		fmt.Sprintf("Uid:\t%d\t%d\t%d\t%d\n", os.Getuid(), os.Getuid(), os.Getuid(), os.Getuid()),
		fmt.Sprintf("Gid:\t%d\t%d\t%d\t%d\n", os.Getgid(), os.Getgid(), os.Getgid(), os.Getgid()),
	} {
		if !strings.Contains(string(status), want) {
			t.Errorf("darlingserver status lacks %q", want)
		}
	}
	ns, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", pid))
	if own, _ := os.Readlink("/proc/self/ns/mnt"); ns == own {
		t.Errorf("darlingserver shares our mount namespace %s", ns)
	}
	mountinfo, _ := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", pid))
	found := false
	for _, l := range strings.Split(string(mountinfo), "\n") {
		f := strings.Fields(l)
		if len(f) < 10 || f[4] != prefix {
			continue
		}
		sep := 6
		for sep < len(f) && f[sep] != "-" {
			sep++
		}
		if sep+3 < len(f) && f[sep+1] == "overlay" {
			found = true
			for _, o := range []string{"lowerdir=" + bins.standin + ".install/libexec/darling", "upperdir=" + prefix, "workdir=" + prefix + ".workdir"} {
				if !strings.Contains(","+f[sep+3]+",", ","+o+",") {
					t.Errorf("overlay options %s lack %s", f[sep+3], o)
				}
			}
		}
	}
	if !found {
		t.Errorf("no overlay at %s in darlingserver's mountinfo:\n%s", prefix, mountinfo)
	}
	if _, err := os.Stat(filepath.Join(prefix, "private/etc/profile")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the host sees the lower layer's /etc/profile in the prefix folder: %v", err)
	}
	if _, err := os.Stat(filepath.Join(fmt.Sprintf("/proc/%d/root", pid), prefix, "private/etc/profile")); err != nil {
		t.Errorf("merged view: %v", err)
	}
	launchd := launchdOf(t, pid)
	if comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", launchd)); string(comm) != "launchd\n" {
		t.Errorf("darlingserver's child is %q, want launchd", comm)
	}
	lstatus, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", launchd))
	if !strings.Contains(string(lstatus), fmt.Sprintf("NSpid:\t%d\t1\n", launchd)) {
		t.Errorf("launchd is not pid 1 of a PID namespace of its own:\n%s", lstatus)
	}
	// #1510: the container keeps the cold-start caller's stdout.
	ours, _ := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", r.Fd()))
	for _, p := range []int{pid, launchd} {
		if held, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/1", p)); held != ours {
			t.Errorf("process %d's stdout is %q, want the cold-start caller's %q", p, held, ours)
		}
	}
	stopContainer(t, prefix)
	out, err := io.ReadAll(r) // EOF only now that the container is gone
	if err != nil {
		t.Fatal(err)
	}
	if want := standinProfileLine + "\n"; string(out) != want {
		t.Errorf("stdout %q, want %q (no Bootstrapping line: stdout is no terminal)", out, want)
	}
}

// On a terminal the cold start's puts() is flushed: the line shows.
func TestStandinBootstrapOnTerminal(t *testing.T) {
	prefix := standinPrefix(t)
	master, slave, err := pty.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer master.Close()
	cmd := standin(prefix, "shell", "true")
	cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
	out := make(chan []byte)
	go func() {
		b, _ := io.ReadAll(master) // EIO once every slave is closed
		out <- b
	}()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	slave.Close()
	if err := waitTimeout(cmd, 20*time.Second); err != nil {
		t.Fatal(err)
	}
	stopContainer(t, prefix) // the container holds the terminal until then
	select {
	case b := <-out:
		if !bytes.Contains(b, []byte("Bootstrapping the container with launchd...\r\n")) {
			t.Errorf("terminal output %q lacks the Bootstrapping line", b)
		}
	case <-time.After(20 * time.Second):
		t.Errorf("the terminal is still held after shutdown")
	}
}

// darling.c trusts P/.init.pid only for a process named darlingserver
// (of the caller's uid); otherwise it deletes the file and starts anew.
func TestStandinInitPidTrust(t *testing.T) {
	prefix := standinPrefix(t)
	sleeper := exec.Command("sleep", "1000")
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	defer sleeper.Wait()
	defer sleeper.Process.Kill()
	standin(prefix, "shutdown").Run() // creates the prefix
	for _, stale := range []string{strconv.Itoa(sleeper.Process.Pid), "junk"} {
		if err := os.WriteFile(filepath.Join(prefix, ".init.pid"), []byte(stale), 0o644); err != nil {
			t.Fatal(err)
		}
		out := tempFile(t) // a cold start: the container keeps it
		cmd := standin(prefix, "shell", "true")
		cmd.Stdout, cmd.Stderr = out, out
		if err := cmd.Run(); err != nil {
			t.Fatalf(".init.pid %q: %v\n%s", stale, err, contents(t, out))
		}
		pid := running(prefix)
		if pid == 0 || strconv.Itoa(pid) == stale {
			t.Fatalf(".init.pid %q: no new darlingserver", stale)
		}
		stopContainer(t, prefix)
	}
}

// shutdown without a container exits 1 at once; with one, it SIGKILLs it.
// Like every subcommand it first creates the prefix.
func TestStandinShutdown(t *testing.T) {
	prefix := standinPrefix(t)
	var stderr bytes.Buffer
	cmd := standin(prefix, "shutdown")
	cmd.Stderr = &stderr
	if code := exitCode(t, cmd.Run()); code != 1 {
		t.Errorf("shutdown without a container: exit %d, want 1", code)
	}
	if want := "Setting up a new Darling prefix at " + prefix + "\nDarling container is not running\n"; stderr.String() != want {
		t.Errorf("stderr %q, want %q", stderr.String(), want)
	}
	u, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	passwd, err := os.ReadFile(filepath.Join(prefix, "private/etc/passwd"))
	if want := fmt.Sprintf("root:*:0:0:System Administrator:/var/root:/bin/sh\n%s:*:%s:%s:Darling User:/Users/%s:/bin/bash\n",
		u.Username, u.Uid, u.Gid, u.Username); err != nil || string(passwd) != want {
		t.Errorf("prefix passwd %q (%v), want %q", passwd, err, want)
	}
	if running(prefix) != 0 {
		t.Errorf("shutdown started a container")
	}
	warm(t, prefix)
	pid := running(prefix)
	launchd := launchdOf(t, pid)
	if out, err := standin(prefix, "shutdown").CombinedOutput(); err != nil || len(out) != 0 {
		t.Errorf("shutdown: %v %q", err, out)
	}
	waitGone(t, pid, launchd)
}

// The prefix is made with one mkdir: a missing parent fails.
func TestStandinPrefixOneMkdir(t *testing.T) {
	base := standinPrefix(t)
	prefix := filepath.Join(base, "b")
	var stderr bytes.Buffer
	cmd := standin(prefix, "shell", "true")
	cmd.Stderr = &stderr
	if code := exitCode(t, cmd.Run()); code != 1 {
		t.Errorf("exit %d, want 1", code)
	}
	want := "Setting up a new Darling prefix at " + prefix + "\nCannot create " + prefix + ": No such file or directory\n"
	if stderr.String() != want {
		t.Errorf("stderr %q, want %q", stderr.String(), want)
	}
	if _, err := os.Lstat(base); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the parent was created: %v", err)
	}
}

// When the container dies mid-session the launcher exits 1, silently.
func TestStandinContainerDies(t *testing.T) {
	prefix := standinPrefix(t)
	warm(t, prefix)
	var stderr bytes.Buffer
	cmd := standin(prefix, "shell", "sh", "-c", "echo started; exec sleep 1000")
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	want := standinProfileLine + "\nstarted\n"
	got := make([]byte, len(want))
	if _, err := io.ReadFull(stdout, got); err != nil || string(got) != want {
		t.Fatalf("stdout %q (%v), want %q", got, err, want)
	}
	stopContainer(t, prefix)
	io.Copy(io.Discard, stdout)
	if code := exitCode(t, cmd.Wait()); code != 1 {
		t.Errorf("exit %d, want 1", code)
	}
	if stderr.Len() != 0 {
		t.Errorf("stderr %q, want nothing", stderr.String())
	}
}

// The command is neither a session nor a process-group leader: the
// per-request shellspawn child is both. Its status is WEXITSTATUS, so a
// command killed by a signal reports 0.
func TestStandinCommandProcess(t *testing.T) {
	prefix := standinPrefix(t)
	warm(t, prefix)
	out, err := standin(prefix, "shell", "sh", "-c", `set -- $(sed 's/.*) //' /proc/$$/stat); echo $$ $2 $3 $4; cat /proc/$4/comm`).Output()
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimPrefix(string(out), standinProfileLine+"\n"), "\n")
	f := strings.Fields(lines[0])
	if len(f) != 4 || len(lines) < 2 {
		t.Fatalf("output %q", out)
	}
	pid, ppid, pgrp, sid := f[0], f[1], f[2], f[3]
	if pid == pgrp || pid == sid {
		t.Errorf("command %s leads its process group %s or session %s", pid, pgrp, sid)
	}
	if ppid != sid || pgrp != sid || lines[1] != "shellspawn" {
		t.Errorf("command %s: parent %s, group %s, session %s led by %q; want the shellspawn child leading both", pid, ppid, pgrp, sid, lines[1])
	}
	for script, want := range map[string]int{"exit 7": 7, "kill -9 $$": 0, "kill -TERM $$": 0} {
		if code := exitCode(t, standin(prefix, "shell", "sh", "-c", script).Run()); code != want {
			t.Errorf("%s: exit %d, want %d", script, code, want)
		}
	}
}

// Terminal mode: the command gets a pty of the launcher's own, sized once
// from the outer terminal, and the launcher exits as soon as the status
// arrives, without waiting for output still to come.
func TestStandinTerminal(t *testing.T) {
	prefix := standinPrefix(t)
	warm(t, prefix)
	fifo := filepath.Join(filepath.Dir(prefix), "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	master, slave, err := pty.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer master.Close()
	if err := pty.Setsize(master, &pty.Winsize{Rows: 40, Cols: 100}); err != nil {
		t.Fatal(err)
	}
	script := `stty size; tty; read x; (read y < /Volumes/SystemRoot` + fifo + `; echo late) & exit 0`
	cmd := standin(prefix, "shell", "sh", "-c", script)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	slave.Close()
	var out []byte
	buf := make([]byte, 4096)
	for !bytes.Contains(out, []byte("/dev/pts/")) || !bytes.HasSuffix(out, []byte("\r\n")) {
		n, err := master.Read(buf)
		if err != nil {
			t.Fatalf("terminal output %q: %v", out, err)
		}
		out = append(out, buf[:n]...)
	}
	master.Write([]byte("\r")) // the command's `read x`
	if err := waitTimeout(cmd, 20*time.Second); err != nil {
		t.Errorf("the launcher, once the status is in: %v", err)
	}
	// Release the background job if it still waits (closing the pty sent
	// its process group SIGHUP).
	if f, err := os.OpenFile(fifo, os.O_WRONLY|syscall.O_NONBLOCK, 0); err == nil {
		f.Write([]byte("go\n"))
		f.Close()
	}
	rest, _ := io.ReadAll(master)
	out = append(out, rest...)
	lines := strings.Split(string(out), "\r\n")
	if len(lines) < 3 || lines[0] != standinProfileLine || lines[1] != "40 100" || !strings.HasPrefix(lines[2], "/dev/pts/") {
		t.Fatalf("terminal output %q", out)
	}
	if lines[2] == slave.Name() {
		t.Errorf("the command uses the outer terminal %s, not a pty of its own", slave.Name())
	}
	if bytes.Contains(out, []byte("late")) {
		t.Errorf("output after the status was relayed: %q", out)
	}
}

// The system root's /etc/profile is noisy, as Darling's path_helper is.
func TestStandinProfileNoise(t *testing.T) {
	prefix := standinPrefix(t)
	warm(t, prefix)
	out, err := standin(prefix, "shell", "echo", "hi").Output()
	if err != nil {
		t.Fatal(err)
	}
	if want := standinProfileLine + "\nhi\n"; string(out) != want {
		t.Errorf("stdout %q, want %q", out, want)
	}
}

// Each shellspawn message length is an unsigned short.
func TestStandinMessageLimit(t *testing.T) {
	prefix := standinPrefix(t)
	warm(t, prefix)
	var stderr bytes.Buffer
	cmd := standin(prefix, "shell", "echo", strings.Repeat("x", 65536))
	cmd.Stderr = &stderr
	if code := exitCode(t, cmd.Run()); code != 1 || !strings.Contains(stderr.String(), "over the 65535-byte shellspawn message limit") {
		t.Errorf("exit %d, stderr %q", code, stderr.String())
	}
}
