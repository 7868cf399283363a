// Command standin is a TEST FIXTURE: a stand-in for Darling's `darling`
// launcher, for machines where Darling cannot be installed. It behaves as
// Darling does as far as darling-sshd can tell, and no production code path
// knows about it:
//
//   - CLI `[--prefix P] shell [ARGS…]` and `shutdown`; the prefix from
//     --prefix or DPREFIX (default $HOME/.darling); no HOME is an error.
//   - A long-lived container per prefix (host pid in P/.init.pid) with its
//     own PID and mount namespaces, started by the first call. A cold start
//     inherits that caller's stdio, prints "Bootstrapping the container with
//     launchd..." to its stdout and holds it open until shutdown (#1510).
//   - `shell` joins ARGS single-quoted and hands "-c <joined>" to the
//     container over a unix socket with the caller's stdio (SCM_RIGHTS), as
//     shellspawn does; the container, not the launcher, starts
//     `bash --login -c …` chrooted at P. Messages over 65535 bytes fail.
//   - The launcher ignores catchable signals and exits with the command's
//     status (0 if the command died of a signal); when it dies, the
//     container SIGKILLs only the command's direct child.
package main

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

const (
	maxMessage   = 65535
	containerCmd = "__standin-container"
	spawnCmd     = "__standin-spawn"
	sockRel      = "var/run/shellspawn.sock"
	bootstrapMsg = "Bootstrapping the container with launchd..."
)

// request is what the launcher sends the container for one command.
type request struct {
	Args []string // bash arguments after --login: none, or "-c", joined
	Env  []string
	Cwd  string
	UID  int
	GID  int
	TTY  bool // fd 0 is a terminal: make it the command's controlling terminal
}

func main() {
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case containerCmd:
			os.Exit(container(os.Args[2]))
		case spawnCmd:
			os.Exit(spawn(os.Args[2:]))
		}
	}
	os.Exit(launcher(os.Args[1:]))
}

func fail(format string, a ...any) int {
	fmt.Fprintf(os.Stderr, format+"\n", a...)
	return 1
}

func launcher(args []string) int {
	home := os.Getenv("HOME")
	if home == "" {
		return fail("Cannot determine your home directory")
	}
	prefix := os.Getenv("DPREFIX")
	if len(args) >= 2 && args[0] == "--prefix" {
		prefix, args = args[1], args[2:]
	}
	if prefix == "" {
		prefix = filepath.Join(home, ".darling")
	}
	prefix, _ = filepath.Abs(prefix)
	if len(args) == 0 {
		return fail("Usage: darling shell [ARGS...] | darling shutdown")
	}
	switch args[0] {
	case "shell":
		return shell(prefix, args[1:])
	case "shutdown":
		return shutdown(prefix)
	}
	return fail("'%s' is not a supported command or a file.", args[0])
}

func quote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

func shell(prefix string, args []string) int {
	req := request{Env: os.Environ(), UID: os.Getuid(), GID: os.Getgid()}
	if len(args) > 0 {
		q := make([]string, len(args))
		for i, a := range args {
			q[i] = quote(a)
		}
		joined := strings.Join(q, " ")
		if len(joined)+1 > maxMessage {
			return fail("darling: shell command is %d bytes, over the %d-byte shellspawn message limit", len(joined)+1, maxMessage)
		}
		req.Args = []string{"-c", joined}
	}
	for _, kv := range req.Env {
		if len(kv)+1 > maxMessage {
			name, _, _ := strings.Cut(kv, "=")
			return fail("darling: environment variable %s is over the %d-byte shellspawn message limit", name, maxMessage)
		}
	}
	cwd, _ := os.Getwd()
	req.Cwd = "/Volumes/SystemRoot" + cwd
	if err := ensureContainer(prefix); err != nil {
		return fail("darling: %v", err)
	}
	// Every catchable signal is ignored, as Darling's launcher does; only
	// now, so that a container started above does not inherit SIG_IGN and
	// hand it down to every command.
	for sig := syscall.Signal(1); sig < 32; sig++ {
		if sig != syscall.SIGKILL && sig != syscall.SIGSTOP && sig != syscall.SIGCHLD && sig != syscall.SIGWINCH {
			signal.Ignore(sig)
		}
	}
	conn, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: filepath.Join(prefix, sockRel), Net: "unix"})
	if err != nil {
		return fail("darling: connect to shellspawn: %v", err)
	}
	fds := []int{0, 1, 2}
	var term *terminal
	if _, err := unix.IoctlGetTermios(0, unix.TCGETS); err == nil {
		// Darling's terminal mode: the command gets a terminal of its own.
		if term, err = newTerminal(); err != nil {
			return fail("darling: %v", err)
		}
		defer term.restore()
		fds = []int{term.slaveFd(), 1, 2}
		if _, err := unix.IoctlGetTermios(1, unix.TCGETS); err == nil {
			fds[1] = term.slaveFd()
		}
		if _, err := unix.IoctlGetTermios(2, unix.TCGETS); err == nil {
			fds[2] = term.slaveFd()
		}
		req.TTY = true
	}
	body, _ := json.Marshal(req)
	hdr := binary.BigEndian.AppendUint32(nil, uint32(len(body)))
	if _, _, err := conn.WriteMsgUnix(hdr, unix.UnixRights(fds...), nil); err != nil {
		return fail("darling: send to shellspawn: %v", err)
	}
	if _, err := conn.Write(body); err != nil {
		return fail("darling: send to shellspawn: %v", err)
	}
	if term != nil {
		term.start()
	}
	var st [4]byte
	if _, err := io.ReadFull(conn, st[:]); err != nil {
		return fail("darling: lost shellspawn: %v", err)
	}
	if term != nil {
		term.wait()
	}
	return int(binary.BigEndian.Uint32(st[:]))
}

// alive reports whether pid names a running (not zombie) process.
func alive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	i := strings.LastIndexByte(string(b), ')')
	return i > 0 && i+2 < len(b) && b[i+2] != 'Z'
}

func initPid(prefix string) int {
	b, err := os.ReadFile(filepath.Join(prefix, ".init.pid"))
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	if pid > 0 && alive(pid) {
		return pid
	}
	return 0
}

// ensureContainer starts the prefix's container unless it runs. The
// container inherits this launcher's stdio: Darling's cold-start bug.
func ensureContainer(prefix string) error {
	lock, err := os.OpenFile(prefix+".standin.lock", os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return err
	}
	defer lock.Close()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		return err
	}
	if initPid(prefix) != 0 {
		return nil
	}
	if _, err := os.Stat(prefix); errors.Is(err, os.ErrNotExist) {
		fmt.Fprintln(os.Stderr, "Setting up a new Darling prefix at "+prefix)
		if err := setupPrefix(prefix); err != nil {
			return err
		}
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	defer r.Close()
	p, err := os.StartProcess(self, []string{self, containerCmd, prefix}, &os.ProcAttr{
		Files: []*os.File{os.Stdin, os.Stdout, os.Stderr, w},
		Sys: &syscall.SysProcAttr{
			Cloneflags:   syscall.CLONE_NEWPID,
			Unshareflags: syscall.CLONE_NEWNS,
			Setsid:       true,
		},
	})
	w.Close()
	if err != nil {
		return fmt.Errorf("start container: %w", err)
	}
	if err := os.WriteFile(filepath.Join(prefix, ".init.pid"), []byte(strconv.Itoa(p.Pid)+"\n"), 0o644); err != nil {
		return err
	}
	var b [1]byte
	if _, err := r.Read(b[:]); err != nil {
		return fmt.Errorf("container did not start: %w", err)
	}
	return p.Release()
}

// setupPrefix creates a new prefix's own folders and files.
func setupPrefix(prefix string) error {
	for _, d := range []string{"etc", "var/run", "var/tmp", "private/tmp", "Users/root", "nix", "usr", "dev", "proc", "Volumes/SystemRoot"} {
		if err := os.MkdirAll(filepath.Join(prefix, d), 0o755); err != nil {
			return err
		}
	}
	os.Chmod(filepath.Join(prefix, "private/tmp"), 0o1777)
	for _, l := range [][2]string{{"tmp", "private/tmp"}} {
		os.Symlink(l[1], filepath.Join(prefix, l[0]))
	}
	files := map[string]string{
		"etc/passwd":  "root:x:0:0:System Administrator:/Users/root:/bin/bash\nnobody:x:65534:65534:Unprivileged User:/var/empty:/usr/bin/false\n",
		"etc/group":   "wheel:x:0:root\nnogroup:x:65534:\n",
		"etc/profile": "# /etc/profile of the stand-in prefix\n",
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(prefix, name), []byte(body), 0o644); err != nil {
			return err
		}
	}
	return nil
}

func shutdown(prefix string) int {
	pid := initPid(prefix)
	if pid == 0 {
		return 0
	}
	_ = unix.Kill(pid, unix.SIGKILL)
	for deadline := time.Now().Add(10 * time.Second); alive(pid); {
		if time.Now().After(deadline) {
			return fail("darling: container %d did not stop", pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return 0
}
