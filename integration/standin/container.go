package main

import (
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"os/signal"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// dropPrivileges is darlingserver's perma_drop_privileges (and making the
// process dumpable again, so that the caller can read /proc/<pid>/root).
func dropPrivileges(uid, gid int) {
	if uid == 0 && gid == 0 {
		return
	}
	if err := syscall.Setresgid(gid, gid, gid); err != nil {
		die("Failed to drop group privileges")
	}
	if err := syscall.Setresuid(uid, uid, uid); err != nil {
		die("Failed to drop user privileges")
	}
	unix.Prctl(unix.PR_SET_DUMPABLE, 1, 0, 0, 0)
}

// darlingserverMain is the container process (argv: darlingserver prefix
// uid gid pipefd fix_permissions). It starts in new mount, UTS and IPC
// namespaces as root, mounts the overlay at the prefix, reports ready on
// pipefd, starts launchd in a new PID namespace, drops to the caller's
// uid and stays.
func darlingserverMain(argv []string) int {
	if len(argv) < 6 {
		fmt.Fprintln(os.Stderr, "darlingserver is not meant to be started manually")
		return 1
	}
	prefix := argv[1]
	uid, _ := strconv.Atoi(argv[2])
	gid, _ := strconv.Atoi(argv[3])
	pipefd, _ := strconv.Atoi(argv[4])
	fix := argv[5] != "" && argv[5][0] == '1'
	if os.Getuid() != 0 || os.Getgid() != 0 {
		fmt.Fprintln(os.Stderr, "darlingserver needs to start as root")
		return 1
	}
	install, err := installDir()
	if err != nil {
		die("darlingserver: %v", err)
	}

	setupUserHome(prefix, uid, gid)
	mountOverlay(prefix, filepath.Join(install, "libexec", "darling"))
	if fix && (uid != 0 || gid != 0) {
		chownPrefix(prefix, uid, gid)
	}
	asIDs(uid, gid, func() {
		for _, d := range []string{"/var/tmp", "/var/run"} {
			wipeDir(prefix + d)
		}
	})

	ready := os.NewFile(uintptr(pipefd), "ready")
	ready.Write([]byte("."))
	ready.Close()

	p := startLaunchd(install, prefix, uid, gid)
	dropPrivileges(uid, gid)
	p.Wait()
	for {
		time.Sleep(time.Hour) // a server without launchd: still "running"
	}
}

// mountOverlay is darlingserver's mount setup in its new mount namespace:
// / a slave of the host's, a fresh tmpfs on /dev/shm, and the overlay at
// prefix with lower as its lower layer and the prefix folder as its upper.
// index=off is dropped on kernels that do not know it.
func mountOverlay(prefix, lower string) {
	// Upstream makes / a slave after replacing /dev/shm; first is safer.
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_SLAVE, ""); err != nil {
		die("Cannot remount / as slave: %s", strerror(err))
	}
	unix.Unmount("/dev/shm", 0)
	if err := unix.Mount("tmpfs", "/dev/shm", "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		die("Cannot mount new /dev/shm: %s", strerror(err))
	}
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s.workdir,index=off", lower, prefix, prefix)
	if err := unix.Mount("overlay", prefix, "overlay", 0, opts); err != nil {
		if err == unix.EINVAL {
			opts = fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s.workdir", lower, prefix, prefix)
			err = unix.Mount("overlay", prefix, "overlay", 0, opts)
		}
		if err != nil {
			die("Cannot mount overlay: %s", strerror(err))
		}
	}
}

// chownPrefix is darlingserver's fix_permissions, for a prefix the
// launcher has just set up: it gives the caller the prefix and its passwd,
// master.passwd and group files, walking each.
func chownPrefix(prefix string, uid, gid int) {
	for _, p := range []string{"", "/private/etc/passwd", "/private/etc/master.passwd", "/private/etc/group"} {
		filepath.Walk(prefix+p, func(path string, fi os.FileInfo, err error) error {
			if err == nil {
				os.Lchown(path, uid, gid)
			}
			return nil
		})
	}
}

// startLaunchd starts launchd as pid 1 of a new PID namespace, with
// darlingserver's stdio.
//
// It is forked from the main thread (see init), so that launchd is listed
// in /proc/<pid>/task/<pid>/children.
// launchd gets a mount namespace of its own (Darling's shares
// darlingserver's) only for what stands in for vchroot: the host's / at
// /Volumes/SystemRoot and /dev. In Darling those are path mappings in
// userspace, not mounts, so the prefix as the kernel resolves it in
// darlingserver's namespace (as darling-sshd's SFTP does) has neither.
func startLaunchd(install, prefix string, uid, gid int) *os.Process {
	p, err := os.StartProcess(filepath.Join(install, "bin", "launchd"),
		[]string{"launchd", prefix, strconv.Itoa(uid), strconv.Itoa(gid)},
		&os.ProcAttr{Files: []*os.File{os.Stdin, os.Stdout, os.Stderr},
			Sys: &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWPID | syscall.CLONE_NEWNS}})
	if err != nil {
		die("Failed to fork to start launchd: %s", strerror(err))
	}
	return p
}

// asIDs runs f with effective uid and gid (darlingserver's
// temp_drop_privileges … regain_privileges).
func asIDs(uid, gid int, f func()) {
	if uid == 0 && gid == 0 {
		f()
		return
	}
	syscall.Setresgid(gid, gid, 0)
	syscall.Setresuid(uid, uid, 0)
	f()
	syscall.Setresuid(0, 0, 0)
	syscall.Setresgid(0, 0, 0)
}

// setupUserHome is darlingserver's: /Users, /Users/Shared, /Users/<login>
// and its LinuxHome link, written into the prefix folder (the future upper
// layer) as the user, before the overlay is mounted.
func setupUserHome(prefix string, uid, gid int) {
	asIDs(uid, gid, func() {
		users := prefix + "/Users"
		unix.Unlink(users)
		unix.Mkdir(users, 0o777)
		unix.Mkdir(users+"/Shared", 0o777)
		u, err := user.LookupId(strconv.Itoa(uid))
		if err != nil || u.Username == "" {
			die("Cannot determine your user name")
		}
		home, ok := os.LookupEnv("HOME")
		if !ok {
			die("Cannot determine your home directory")
		}
		dir := users + "/" + u.Username
		unix.Mkdir(dir, 0o755)
		unix.Unlink(dir + "/LinuxHome")
		unix.Symlink(systemRoot+home, dir+"/LinuxHome")
	})
}

func wipeDir(dir string) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range ents {
		p := filepath.Join(dir, e.Name())
		if e.IsDir() {
			wipeDir(p)
			unix.Rmdir(p)
		} else {
			unix.Unlink(p)
		}
	}
}

// launchdMain is pid 1 of the container's PID namespace (argv: launchd
// prefix uid gid), in darlingserver's mount namespace, with the first
// caller's stdio. It mounts its /proc at P/proc, chroots at the merged
// prefix, drops to the caller's uid and serves shellspawn: each connection
// gets a child of its own (shellspawnMain). It also reaps orphans.
func launchdMain(argv []string) int {
	if len(argv) < 4 || os.Getpid() != 1 {
		fmt.Fprintln(os.Stderr, "launchd: not started by darlingserver")
		return 1
	}
	prefix := argv[1]
	uid, _ := strconv.Atoi(argv[2])
	gid, _ := strconv.Atoi(argv[3])
	mountVchroot(prefix)
	install, err := installDir()
	if err != nil {
		die("launchd: %v", err)
	}
	spawner := systemRoot + filepath.Join(install, "bin", "shellspawn")
	if err := unix.Chroot(prefix); err != nil {
		die("launchd: chroot: %s", strerror(err))
	}
	unix.Chdir("/")
	dropPrivileges(uid, gid)

	// spawnLaunchd's puts() is followed by execl: the line is flushed only
	// when stdout is a terminal (line-buffered).
	if isatty(1) {
		os.Stdout.WriteString("Bootstrapping the container with launchd...\n")
	}

	reapChildren()
	l := listenShellspawn()
	for {
		serveShellspawn(l, spawner)
	}
}

// mountVchroot mounts in launchd's mount namespace what Darling's vchroot
// and its /dev handling give: the host's / at /Volumes/SystemRoot
// (read-write, as the user) and the host's /dev; and the new PID
// namespace's /proc at P/proc.
func mountVchroot(prefix string) {
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_SLAVE, ""); err != nil {
		die("launchd: cannot make / a slave: %s", strerror(err))
	}
	for _, m := range [][2]string{{"/", systemRoot}, {"/dev", "/dev"}} {
		if err := unix.Mount(m[0], prefix+m[1], "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			die("Cannot mount %s: %s", m[1], strerror(err))
		}
	}
	if err := unix.Mount("proc", prefix+"/proc", "proc", 0, ""); err != nil {
		die("Cannot mount procfs: %s", strerror(err))
	}
}

// reapChildren reaps, on every SIGCHLD, whatever has exited: as pid 1,
// launchd inherits the namespace's orphans.
func reapChildren() {
	sigc := make(chan os.Signal, 16)
	signal.Notify(sigc, syscall.SIGCHLD)
	go func() {
		for range sigc {
			for {
				pid, err := syscall.Wait4(-1, nil, syscall.WNOHANG, nil)
				if err != nil || pid <= 0 {
					break
				}
			}
		}
	}()
}

// listenShellspawn listens on shellspawn's socket, in place of an old one;
// only the caller may connect.
func listenShellspawn() *net.UnixListener {
	unix.Unlink(sockPath)
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: sockPath, Net: "unix"})
	if err != nil {
		die("Binding the unix socket: %s", strerror(err))
	}
	l.SetUnlinkOnClose(false)
	os.Chmod(sockPath, 0o600)
	return l
}

// serveShellspawn accepts one launcher's connection and hands it, as fd 3,
// to a shellspawn child of its own (shellspawnMain). A connection that
// fails is dropped.
func serveShellspawn(l *net.UnixListener, spawner string) {
	c, err := l.AcceptUnix()
	if err != nil {
		return
	}
	f, err := c.File()
	c.Close()
	if err != nil {
		return
	}
	syscall.ForkExec(spawner, []string{"shellspawn"}, &syscall.ProcAttr{
		Dir:   "/",
		Env:   []string{},
		Files: []uintptr{0, 1, 2, f.Fd()},
	})
	f.Close()
}

// shellspawnMain is shellspawn's per-connection child (fd 3 is the
// launcher's connection): it reads the commands up to GO, does setsid()
// and TIOCSCTTY on the passed stdin, forks the command, forwards signals,
// and writes WEXITSTATUS back. When the launcher goes away only the
// command itself is SIGKILLed. On any error it closes the connection
// without a status.
func shellspawnMain() int {
	const fd = 3
	unix.CloseOnExec(fd)
	req, ok := readSpawnRequest(fd)
	if !ok {
		return 1
	}
	pid, err := req.start()
	if err != nil {
		return 1
	}
	kill := deliverSignals(fd, pid)
	exited := waitExit(pid)
	var ws syscall.WaitStatus
	select {
	case ws = <-exited:
	case <-kill:
		unix.Kill(pid, unix.SIGKILL)
		ws = <-exited
	}
	var st [4]byte
	binary.NativeEndian.PutUint32(st[:], (uint32(ws)>>8)&0xff) // WEXITSTATUS
	unix.Write(fd, st[:])
	return 0
}

// spawnRequest is what the launcher's commands up to GO set up.
type spawnRequest struct {
	argv     []string
	execPath string // "" for /bin/bash
	env      []string
	fds      []int // the launcher's stdin, stdout and stderr, passed with GO
}

// readSpawnRequest reads the launcher's commands up to GO. It reports false
// when the connection fails or a command is malformed.
func readSpawnRequest(fd int) (*spawnRequest, bool) {
	r := &spawnRequest{argv: []string{"/bin/bash", "--login"}}
	oob := make([]byte, 3*unix.CmsgSpace(4))
	for r.fds == nil {
		cmd, param, oobn, ok := readSpawnCommand(fd, oob)
		if !ok || !r.apply(cmd, param, oob[:oobn]) {
			return nil, false
		}
	}
	return r, true
}

// readSpawnCommand reads one command: its header by recvmsg (so that GO's
// file descriptors land in oob), then its data. param is nil when the
// command has no data.
func readSpawnCommand(fd int, oob []byte) (cmd uint16, param []byte, oobn int, ok bool) {
	var hdr [4]byte
	n, oobn, _, _, err := unix.Recvmsg(fd, hdr[:], oob, 0)
	if err != nil || n != 4 {
		return 0, nil, 0, false
	}
	cmd = binary.NativeEndian.Uint16(hdr[0:])
	length := int(binary.NativeEndian.Uint16(hdr[2:]))
	if length == 0 {
		return cmd, nil, oobn, true
	}
	param = make([]byte, length)
	if got, err := readFull(fd, param); err != nil || got != length {
		return 0, nil, 0, false
	}
	return cmd, param, oobn, true
}

// apply records one command; a string parameter ends at its first NUL.
// oob is the control data that came with the command. It reports false
// when GO does not carry exactly three file descriptors.
func (r *spawnRequest) apply(cmd uint16, param, oob []byte) bool {
	str := string(param)
	if i := strings.IndexByte(str, 0); i >= 0 {
		str = str[:i]
	}
	switch cmd {
	case cmdAddArg:
		if param != nil {
			r.argv = append(r.argv, str)
		}
	case cmdSetEnv:
		if param != nil {
			r.putenv(str)
		}
	case cmdChdir:
		if param != nil {
			unix.Chdir(str)
		}
	case cmdGo:
		fds, ok := passedFds(oob)
		if !ok {
			return false
		}
		r.fds = fds
	case cmdSetUIDGID:
		// Darling's uids are virtual; the stand-in's command runs as
		// the caller's real uid already.
	case cmdSetExec:
		r.argv = r.argv[:0]
		r.execPath = str
	}
	return true
}

// putenv is putenv(3) on the command's environment: NAME=value sets,
// NAME alone unsets.
func (r *spawnRequest) putenv(kv string) {
	name, _, hasEq := strings.Cut(kv, "=")
	for i, e := range r.env {
		if n, _, _ := strings.Cut(e, "="); n == name {
			if hasEq {
				r.env[i] = kv
			} else {
				r.env = append(r.env[:i], r.env[i+1:]...)
			}
			return
		}
	}
	if hasEq {
		r.env = append(r.env, kv)
	}
}

// passedFds returns the three file descriptors of GO's SCM_RIGHTS message,
// or false if oob holds anything else.
func passedFds(oob []byte) ([]int, bool) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil || len(msgs) == 0 || msgs[0].Header.Level != unix.SOL_SOCKET ||
		msgs[0].Header.Type != unix.SCM_RIGHTS || msgs[0].Header.Len != uint64(unix.CmsgLen(3*4)) {
		return nil, false
	}
	fds, err := unix.ParseUnixRights(&msgs[0])
	if err != nil || len(fds) != 3 {
		return nil, false
	}
	return fds, true
}

// start makes this process a session leader with the passed stdin as its
// controlling terminal (if it is one), then forks the command on the
// passed stdio. The command is not a session or process-group leader.
func (r *spawnRequest) start() (int, error) {
	unix.Setsid()
	for i, f := range r.fds {
		unix.Dup2(f, i)
	}
	unix.IoctlSetInt(0, unix.TIOCSCTTY, 0)
	execPath := r.execPath
	if execPath == "" {
		execPath = "/bin/bash"
	}
	return syscall.ForkExec(execPath, r.argv, &syscall.ProcAttr{Env: r.env, Files: []uintptr{0, 1, 2}})
}

// deliverSignals passes the launcher's SIGNAL commands on to the command
// until the launcher goes away, and then closes the channel it returns.
func deliverSignals(fd, pid int) <-chan struct{} {
	kill := make(chan struct{})
	go func() {
		defer close(kill)
		for deliverSignal(fd, pid) {
		}
	}()
	return kill
}

// deliverSignal reads one command, which after GO can only be SIGNAL, and
// sends its signal to the terminal's foreground process group leader, or
// else to the command's process group. It reports false once the launcher
// is gone. Anything but SIGNAL ends shellspawn without a status (upstream's
// "goto err"), after SIGKILLing the command.
func deliverSignal(fd, pid int) bool {
	var hdr [4]byte
	if n, err := readFull(fd, hdr[:]); err != nil || n != 4 {
		return false // the launcher is gone
	}
	if binary.NativeEndian.Uint16(hdr[0:]) != cmdSignal || binary.NativeEndian.Uint16(hdr[2:]) != 4 {
		unix.Kill(pid, unix.SIGKILL) // upstream's "goto err": no status
		os.Exit(1)
	}
	var b [4]byte
	if n, err := readFull(fd, b[:]); err != nil || n != 4 {
		unix.Kill(pid, unix.SIGKILL)
		os.Exit(1)
	}
	sig := unix.Signal(int32(binary.NativeEndian.Uint32(b[:])))
	if sig == 16 || sig == 30 || sig <= 0 || sig >= 32 {
		return true // SIGSTKFLT, SIGPWR: no Darwin counterpart
	}
	if fg, err := unix.IoctlGetInt(0, unix.TIOCGPGRP); err == nil {
		unix.Kill(fg, sig)
	} else {
		unix.Kill(-pid, sig) // the command leads no group: ESRCH
	}
	return true
}

// waitExit waits for the command and sends its wait status on the
// channel it returns.
func waitExit(pid int) <-chan syscall.WaitStatus {
	exited := make(chan syscall.WaitStatus, 1)
	go func() {
		var ws syscall.WaitStatus
		for {
			_, err := syscall.Wait4(pid, &ws, 0, nil)
			if err != syscall.EINTR {
				break
			}
		}
		exited <- ws
	}()
	return exited
}

func readFull(fd int, b []byte) (int, error) {
	got := 0
	for got < len(b) {
		n, err := unix.Read(fd, b[got:])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return got, err
		}
		if n == 0 {
			return got, nil
		}
		got += n
	}
	return got, nil
}
