package main

import (
	"encoding/binary"
	"fmt"
	"os"
	"os/user"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// shellspawn's commands (src/shellspawn/shellspawn.h). On the wire each is
// a packed struct { unsigned short cmd; unsigned short data_length; } in
// native byte order followed by data_length bytes: strings carry their
// terminating NUL, so a string of 65535 bytes or more does not fit.
const (
	cmdAddArg    = 1 // add shell argument
	cmdSetEnv    = 2 // add env variable string
	cmdChdir     = 3
	cmdGo        = 4 // execute now; carries the three fds (SCM_RIGHTS)
	cmdSignal    = 5 // pass a signal from client
	cmdSetUIDGID = 6 // set virtual uid and gid
	cmdSetExec   = 7 // set the executable to spawn instead of a shell
)

const maxMessage = 65535

func header(cmd, length int) []byte {
	var h [4]byte
	binary.NativeEndian.PutUint16(h[0:], uint16(cmd))
	binary.NativeEndian.PutUint16(h[2:], uint16(length))
	return h[:]
}

// pushData sends one command in one write, as upstream does.
func pushData(fd, cmd int, data []byte) {
	msg := append(header(cmd, len(data)), data...)
	for len(msg) > 0 {
		n, err := unix.Write(fd, msg)
		if err == unix.EINTR || err == unix.EAGAIN {
			continue
		}
		if err != nil {
			die("Error sending command to shellspawn: %s", strerror(err))
		}
		msg = msg[n:]
	}
}

// pushString sends a string with its NUL. Upstream stores strlen+1 in an
// unsigned short and then desynchronises the stream; the stand-in fails
// instead, with what instead of failing silently.
func pushString(fd, cmd int, s string, what string) {
	if len(s)+1 > maxMessage {
		die("darling: %s is %d bytes, over the %d-byte shellspawn message limit", what, len(s)+1, maxMessage)
	}
	pushData(fd, cmd, append([]byte(s), 0))
}

func connectToShellspawn(pidInit int) int {
	display := prefix + sockPath
	fail := func(err error) {
		die("Error connecting to shellspawn in the container (%s): %s", display, strerror(err))
	}
	if len(display) >= 108 {
		fail(unix.ENAMETOOLONG) // sun_path
	}
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		die("Error creating a unix domain socket: %s", strerror(err))
	}
	// The socket lives in the container's mount namespace, on the overlay:
	// reach it through darlingserver's root, by an O_PATH descriptor.
	path, err := unix.Open(fmt.Sprintf("/proc/%d/root%s%s", pidInit, absPrefix, sockPath), unix.O_PATH|unix.O_CLOEXEC, 0)
	if err != nil {
		fail(err)
	}
	err = unix.Connect(fd, &unix.SockaddrUnix{Name: "/proc/self/fd/" + strconv.Itoa(path)})
	unix.Close(path)
	if err != nil {
		fail(err)
	}
	return fd
}

func setupShellspawnEnv(fd int) {
	pushString(fd, cmdSetEnv, "PATH=/usr/bin:/bin:/usr/sbin:/sbin:/usr/local/bin", "PATH")
	pushString(fd, cmdSetEnv, "TMPDIR=/private/tmp", "TMPDIR")
	u, err := user.LookupId(strconv.Itoa(os.Geteuid()))
	if err != nil || u.Username == "" {
		die("Cannot determine your user name")
	}
	pushString(fd, cmdSetEnv, "HOME=/Users/"+u.Username, "HOME")
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		if name == "PATH" || name == "TMPDIR" || name == "HOME" {
			continue
		}
		pushString(fd, cmdSetEnv, kv, "environment variable "+name)
	}
}

func setupWorkingDir(fd int) {
	pushString(fd, cmdChdir, systemRoot+workingDir, "working directory")
}

func setupIDs(fd int) {
	var ids [8]byte
	binary.NativeEndian.PutUint32(ids[0:], uint32(origUID))
	binary.NativeEndian.PutUint32(ids[4:], uint32(origGID))
	pushData(fd, cmdSetUIDGID, ids[:])
}

func quote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// spawnShell runs `/bin/bash --login` with, given arguments, -c and the
// arguments single-quoted and joined by spaces. It does not return.
func spawnShell(pidInit int, argv []string) {
	var buffer string
	if argv != nil {
		q := make([]string, len(argv))
		for i, a := range argv {
			q[i] = quote(a)
		}
		buffer = strings.Join(q, " ")
	}
	fd := connectToShellspawn(pidInit)
	setupShellspawnEnv(fd)
	if argv != nil {
		pushString(fd, cmdAddArg, "-c", "-c")
		pushString(fd, cmdAddArg, buffer, "shell command")
	}
	setupWorkingDir(fd)
	setupIDs(fd)
	spawnGo(fd)
}

// spawnBinary runs binary with argv (argv[0] included), without bash.
func spawnBinary(pidInit int, binary string, argv []string) {
	fd := connectToShellspawn(pidInit)
	setupShellspawnEnv(fd)
	pushString(fd, cmdSetExec, binary, "executable path")
	for _, a := range argv {
		pushString(fd, cmdAddArg, a, "argument")
	}
	setupWorkingDir(fd)
	setupIDs(fd)
	spawnGo(fd)
}

func isatty(fd int) bool {
	_, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	return err == nil
}

func spawnGo(fd int) {
	var fds [3]int
	master := -1
	if isatty(0) {
		master = setupPtys(&fds)
	} else {
		fds[0], _ = unix.Dup(0)
	}
	if master == -1 || !isatty(1) {
		fds[1] = 1
	}
	if master == -1 || !isatty(2) {
		fds[2] = 2
	}
	if err := unix.Sendmsg(fd, header(cmdGo, 0), unix.UnixRights(fds[:]...), nil, 0); err != nil {
		die("Error sending command to shellspawn: %s", strerror(err))
	}
	unix.Close(fds[0])
	shellLoop(fd, master)
	exit(0)
}
