package main

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// container is the long-lived process of a prefix: pid 1 of its own PID
// namespace, in its own mount namespace where it assembles the prefix view
// at P, serving shellspawn requests on P/var/run/shellspawn.sock.
func container(prefix string) int {
	if err := assemble(prefix); err != nil {
		return fail("container: %v", err)
	}
	sock := filepath.Join(prefix, sockRel)
	os.Remove(sock)
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		return fail("container: %v", err)
	}
	r := &reaper{waiters: map[int]chan syscall.WaitStatus{}, sigc: make(chan os.Signal, 16)}
	// Registered before any child exists, so no SIGCHLD is missed.
	signal.Notify(r.sigc, syscall.SIGCHLD)
	go r.run()
	// The cold-start bug: our stdout is the first caller's, and we keep it.
	fmt.Fprintln(os.Stdout, bootstrapMsg)
	ready := os.NewFile(3, "ready")
	ready.Write([]byte{1})
	ready.Close()
	self, _ := os.Executable()
	for {
		c, err := l.AcceptUnix()
		if err != nil {
			return fail("container: accept: %v", err)
		}
		go serveSpawn(c, prefix, self, r)
	}
}

// assemble mounts the prefix view: the host's system folders read-only,
// /dev and a /proc of our own PID namespace.
func assemble(prefix string) error {
	bindRO := func(src, dst string) error {
		if err := os.MkdirAll(dst, 0o755); err != nil {
			return err
		}
		if err := unix.Mount(src, dst, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return fmt.Errorf("bind %s: %w", src, err)
		}
		return unix.MountSetattr(-1, dst, unix.AT_RECURSIVE, &unix.MountAttr{Attr_set: unix.MOUNT_ATTR_RDONLY})
	}
	if err := bindRO("/usr", filepath.Join(prefix, "usr")); err != nil {
		return err
	}
	for _, d := range []string{"bin", "lib", "lib64", "sbin"} {
		host := "/" + d
		fi, err := os.Lstat(host)
		if err != nil {
			continue
		}
		dst := filepath.Join(prefix, d)
		if fi.Mode()&os.ModeSymlink != 0 {
			target, _ := os.Readlink(host)
			if _, err := os.Lstat(dst); err != nil {
				if err := os.Symlink(strings.TrimPrefix(target, "/"), dst); err != nil {
					return err
				}
			}
			continue
		}
		if err := bindRO(host, dst); err != nil {
			return err
		}
	}
	for _, d := range []string{"dev", "proc", "var/run", "Volumes/SystemRoot"} {
		if err := os.MkdirAll(filepath.Join(prefix, d), 0o755); err != nil {
			return err
		}
	}
	if err := unix.Mount("/dev", filepath.Join(prefix, "dev"), "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("bind /dev: %w", err)
	}
	if err := unix.Mount("proc", filepath.Join(prefix, "proc"), "proc", 0, ""); err != nil {
		return fmt.Errorf("mount proc: %w", err)
	}
	return nil
}

// reaper is pid 1's one wait4(-1) loop; spawners wait on their pid here.
type reaper struct {
	mu      sync.Mutex
	waiters map[int]chan syscall.WaitStatus
	sigc    chan os.Signal
}

func (r *reaper) run() {
	for range r.sigc {
		for {
			var ws syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
			if err != nil || pid <= 0 {
				break
			}
			r.mu.Lock()
			if c, ok := r.waiters[pid]; ok {
				c <- ws
				delete(r.waiters, pid)
			}
			r.mu.Unlock()
		}
	}
}

// serveSpawn runs one shellspawn request: the command gets the caller's
// stdio, a login bash chrooted at the prefix, and the environment Darling
// gives it.
func serveSpawn(c *net.UnixConn, prefix, self string, r *reaper) {
	defer c.Close()
	var hdr [4]byte
	oob := make([]byte, unix.CmsgSpace(3*4))
	n, oobn, _, _, err := c.ReadMsgUnix(hdr[:], oob)
	if err != nil || n != 4 {
		return
	}
	var fds []int
	if msgs, err := unix.ParseSocketControlMessage(oob[:oobn]); err == nil && len(msgs) == 1 {
		fds, _ = unix.ParseUnixRights(&msgs[0])
	}
	closeFds := func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	}
	defer closeFds()
	if len(fds) != 3 {
		return
	}
	body := make([]byte, binary.BigEndian.Uint32(hdr[:]))
	if _, err := io.ReadFull(c, body); err != nil {
		return
	}
	var req request
	if err := json.Unmarshal(body, &req); err != nil {
		return
	}
	name := "user" + strconv.Itoa(req.UID)
	if u, err := user.LookupId(strconv.Itoa(req.UID)); err == nil {
		name = u.Username
	}
	home := "/Users/" + name
	os.MkdirAll(filepath.Join(prefix, home), 0o755)
	env := []string{"PATH=/usr/bin:/bin:/usr/sbin:/sbin:/usr/local/bin", "HOME=" + home, "TMPDIR=/private/tmp"}
	for _, kv := range req.Env {
		k, _, _ := strings.Cut(kv, "=")
		if k != "PATH" && k != "HOME" && k != "TMPDIR" {
			env = append(env, kv)
		}
	}
	argv := append([]string{self, spawnCmd, prefix, req.Cwd, strconv.Itoa(req.UID), strconv.Itoa(req.GID),
		"/bin/bash", "--login"}, req.Args...)
	done := make(chan syscall.WaitStatus, 1)
	r.mu.Lock()
	pid, err := syscall.ForkExec(self, argv, &syscall.ProcAttr{
		Env:   env,
		Files: []uintptr{uintptr(fds[0]), uintptr(fds[1]), uintptr(fds[2])},
		Sys:   &syscall.SysProcAttr{Setsid: true, Setctty: req.TTY, Ctty: 0, Unshareflags: syscall.CLONE_NEWNS},
	})
	if err == nil {
		r.waiters[pid] = done
	}
	r.mu.Unlock()
	// The container must not keep the caller's stdio, or EOF never comes.
	closeFds()
	fds = nil
	if err != nil {
		binary.BigEndian.PutUint32(hdr[:], 127)
		c.Write(hdr[:])
		return
	}
	// The launcher going away (its socket closing) SIGKILLs only our direct child.
	hup := make(chan struct{})
	go func() {
		var b [1]byte
		c.Read(b[:])
		close(hup)
	}()
	var ws syscall.WaitStatus
	select {
	case ws = <-done:
	case <-hup:
		unix.Kill(pid, unix.SIGKILL)
		return
	}
	code := 0 // a command killed by a signal reports 0, as Darling does
	if ws.Exited() {
		code = ws.ExitStatus()
	}
	binary.BigEndian.PutUint32(hdr[:], uint32(code))
	c.Write(hdr[:])
}

// spawn runs in the command's own mount namespace: it shows the host's root
// read-only at /Volumes/SystemRoot, chroots at the prefix and execs the
// command. Args: prefix cwd uid gid argv...
func spawn(args []string) int {
	if len(args) < 5 {
		return fail("spawn: bad arguments")
	}
	prefix, cwd, argv := args[0], args[1], args[4:]
	uid, _ := strconv.Atoi(args[2])
	gid, _ := strconv.Atoi(args[3])
	sysroot := filepath.Join(prefix, "Volumes/SystemRoot")
	if err := unix.Mount("/", sysroot, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fail("spawn: bind /: %v", err)
	}
	if err := unix.MountSetattr(-1, sysroot, unix.AT_RECURSIVE, &unix.MountAttr{Attr_set: unix.MOUNT_ATTR_RDONLY}); err != nil {
		return fail("spawn: read-only /Volumes/SystemRoot: %v", err)
	}
	if err := unix.Chroot(prefix); err != nil {
		return fail("spawn: chroot: %v", err)
	}
	if err := unix.Chdir(cwd); err != nil {
		unix.Chdir("/")
	}
	if uid != 0 {
		if err := unix.Setgid(gid); err != nil {
			return fail("spawn: setgid: %v", err)
		}
		if err := unix.Setuid(uid); err != nil {
			return fail("spawn: setuid: %v", err)
		}
	}
	err := unix.Exec(argv[0], argv, os.Environ())
	return fail("spawn: exec %s: %v", argv[0], err)
}
