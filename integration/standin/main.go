// Command standin is a TEST FIXTURE: a stand-in for Darling's `darling`
// launcher, for machines where Darling cannot be installed. No production
// code path knows about it. It imitates upstream Darling (darlinghq/darling
// src/startup/darling.c, src/shellspawn/shellspawn.c and darlingserver's
// src/darlingserver.cpp) strictly: where upstream is unfriendly, so is this.
//
// What it imitates:
//
//   - The CLI: `darling shell [ARGS…]`, `darling exec PATH [ARGS…]`,
//     `darling PATH [ARGS…]`, `darling shutdown`, --help and --version. The
//     prefix comes only from DPREFIX (default $HOME/.darling); there is no
//     --prefix option. Everything happens in upstream's order: the prefix is
//     created (one mkdir: its parent must exist) and filled
//     (private/etc/passwd, master.passwd, group, …) by every invocation, then
//     the options are parsed getopt-style (an unknown one is reported on
//     stderr and skipped), then the container is started, and only then is
//     argv[1] looked at: `darling --prefix P shell` starts the DPREFIX
//     container and then prints "'--prefix' is not a supported command or a
//     file." on stdout, exit 1.
//     Wrapper mode: with DARLING_STANDIN_WRAPPER=1 in the environment a
//     leading `--prefix P` sets DPREFIX=P and is dropped, as a wrapper
//     script around upstream's launcher would do.
//   - DPREFIX is removed from the environment. The command's environment is
//     the caller's, with PATH=/usr/bin:/bin:/usr/sbin:/sbin:/usr/local/bin,
//     TMPDIR=/private/tmp and HOME=/Users/<login> forced. Everything crosses
//     to the container in shellspawn's wire format (a native-endian unsigned
//     short command, an unsigned short length, the bytes), so bytes that are
//     not UTF-8 pass unchanged; a message over 65535 bytes fails.
//   - The container: a process named darlingserver (host pid written to
//     P/.init.pid without a newline) running as the caller's uid in its own
//     mount (and UTS, IPC) namespace, where it mounts an overlay at P:
//     lowerdir = the stand-in's system root (<executable>.install/libexec/darling,
//     built once next to the executable), upperdir = P, workdir = P.workdir,
//     index=off. From the host P holds only the upper layer;
//     /proc/<.init.pid>/root/P is the merged view. Its child "launchd" is pid 1
//     of a new PID namespace, mounts that namespace's /proc at P/proc and
//     serves shellspawn on P/var/run/shellspawn.sock. The host's / is
//     P/Volumes/SystemRoot (read-write, as the caller), /dev is the host's.
//     An existing P/.init.pid is trusted only if that process's comm is
//     darlingserver and (for a non-root caller) its uids and gids are the
//     caller's, else it is deleted and a new container started.
//   - A cold start (no container yet) hands darlingserver and launchd the
//     caller's stdin, stdout and stderr, held until shutdown (#1510); they
//     stay in the caller's session and process group. "Setting up a new
//     Darling prefix at P" goes to stderr for a new prefix; "Bootstrapping
//     the container with launchd..." reaches stdout only when it is a
//     terminal (upstream's puts() before execl is never flushed otherwise).
//     The launcher then polls for the shellspawn socket once a second (up to
//     15 s), so a cold start takes at least a second. Concurrent cold starts
//     are not serialised (upstream has no lock either).
//   - shellspawn: a per-request child does setsid() and TIOCSCTTY on the
//     passed stdin, then forks `/bin/bash --login [-c "'a' 'b'"]` (or the
//     `exec` binary) chrooted at the merged P with cwd /Volumes/SystemRoot +
//     the caller's cwd. The command is not a session or process-group
//     leader. Its status is WEXITSTATUS (0 when it died of a signal); the
//     launcher exits with it, or with 1 and no message when the socket
//     closes without a status (e.g. the container died). When the launcher
//     goes away, only the command (the direct child) is SIGKILLed.
//   - Signals 1-31 reaching the launcher (once the command runs) are caught
//     and forwarded: SIGINT becomes SIGTERM when not in terminal mode, and
//     shellspawn sends them to the terminal's foreground process-group
//     leader, or else to the command's process group, which does not exist
//     (so outside terminal mode they are lost).
//   - Terminal mode (stdin is a terminal): a pty of the launcher's own; the
//     outer termios and window size are copied once at the start, the
//     SIGWINCH handler is installed only when the relay starts (a resize in
//     between is lost), bytes are relayed 4 KiB at a time, and the launcher
//     exits as soon as the status arrives (output not yet relayed is lost).
//   - `shutdown`: exits 1 with "Darling container is not running" without a
//     container, else SIGKILLs launchd and darlingserver without waiting.
//   - The system root's /etc/profile prints a line on stdout (Darling's runs
//     path_helper), so every `darling shell` command's output starts with it.
//
// What it cannot imitate: Mach-O binaries, dyld and the mldr loader; a real
// launchd, XPC, Mach ports and the darlingserver RPC; vchroot (a userspace
// path prefix in Darling, a real chroot here) and Darling's virtual uids
// (SETUIDGID is ignored: commands run as the caller's real uid); macOS's
// system files (the lower layer holds links to the host's /usr instead);
// the launcher joining the container's mount namespace (it connects through
// /proc/<pid>/root instead, so `darling PATH` resolves PATH on the host);
// SIGURG forwarding (the Go runtime uses SIGURG); setuid-root installation
// details beyond "the effective uid must be 0".
package main

import (
	"errors"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

const (
	sockPath   = "/var/run/shellspawn.sock" // SHELLSPAWN_SOCKPATH
	systemRoot = "/Volumes/SystemRoot"
	wrapperEnv = "DARLING_STANDIN_WRAPPER"
)

// The main goroutine stays on the main thread: darlingserver must fork
// launchd from it, since `darling shutdown` finds launchd in
// /proc/<pid>/task/<pid>/children.
func init() { runtime.LockOSThread() }

func main() {
	switch filepath.Base(os.Args[0]) {
	case "darlingserver":
		os.Exit(darlingserverMain(os.Args))
	case "launchd":
		os.Exit(launchdMain(os.Args))
	case "shellspawn":
		os.Exit(shellspawnMain())
	}
	os.Exit(launcher(os.Args))
}

// restoreTerm undoes terminal mode; every exit of the launcher calls it
// (upstream's atexit).
var restoreTerm = func() {}

// die prints a message on stderr and exits 1, as upstream's
// fprintf(stderr, …); exit(1).
func die(format string, a ...any) {
	fmt.Fprintf(os.Stderr, format+"\n", a...)
	exit(1)
}

func exit(code int) {
	restoreTerm()
	os.Exit(code)
}

// strerror is glibc's text for an errno.
func strerror(err error) string {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		if errno == 0 {
			return "Success"
		}
		s := errno.Error()
		return strings.ToUpper(s[:1]) + s[1:]
	}
	return err.Error()
}

// The launcher's state, upstream's globals.
var (
	prefix     string
	absPrefix  string
	origUID    int
	origGID    int
	fixPerms   bool
	workingDir string
)

// launcher is upstream's main: every step in upstream's order, so that
// what an invocation does before failing (create the prefix, start the
// container) is what upstream's does.
func launcher(argv []string) int {
	argv = wrapperArgs(argv)
	if len(argv) <= 1 {
		showHelp(argv[0])
		return 1
	}
	if os.Geteuid() != 0 {
		missingSetuidRoot()
		return 1
	}
	origUID, origGID = os.Getuid(), os.Getgid()
	if !setPrefix() {
		return 1
	}
	if !checkPrefixDir() {
		setupPrefix()
		fixPerms = true
	}
	checkPrefixOwner()

	getoptLong(argv)

	pidInit := getInitProcess()
	if argv[1] == "shutdown" {
		return shutdown(pidInit)
	}
	if pidInit == 0 {
		pidInit = coldStart()
	}
	joinContainer(pidInit)

	if origUID != 0 {
		syscall.Seteuid(origUID)
	}
	return runCommand(pidInit, argv)
}

// wrapperArgs is what a wrapper script around upstream's launcher does in
// wrapper mode: a leading `--prefix P` becomes DPREFIX=P and is dropped.
// Without wrapper mode argv is upstream's, unchanged.
func wrapperArgs(argv []string) []string {
	if os.Getenv(wrapperEnv) == "1" && len(argv) >= 3 && argv[1] == "--prefix" {
		os.Setenv("DPREFIX", argv[2])
		argv = append([]string{argv[0]}, argv[3:]...)
	}
	return argv
}

// setPrefix sets prefix (from DPREFIX, else $HOME/.darling), absPrefix and
// workingDir, and removes DPREFIX from the environment: upstream's command
// never sees it. It prints why and reports false when there is no usable
// prefix.
func setPrefix() bool {
	p, ok := os.LookupEnv("DPREFIX")
	if !ok {
		home, ok := os.LookupEnv("HOME")
		if !ok {
			fmt.Fprintln(os.Stderr, "Cannot detect your home directory!")
			return false
		}
		p = home + "/.darling"
	}
	prefix = p
	if len(prefix) > 255 {
		fmt.Fprintln(os.Stderr, "Prefix path too long")
		return false
	}
	os.Unsetenv("DPREFIX")
	workingDir, _ = os.Getwd()
	absPrefix, _ = filepath.Abs(prefix)
	return true
}

// shutdown is `darling shutdown`: SIGKILL launchd and darlingserver,
// without waiting for them; exit 1 when there is no container.
func shutdown(pidInit int) int {
	if pidInit == 0 {
		fmt.Fprintln(os.Stderr, "Darling container is not running")
		return 1
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pidInit, pidInit))
	launchd, ok := scanInt(string(b))
	if err != nil || !ok {
		fmt.Fprintln(os.Stderr, "Failed to shutdown Darling container")
		return 1
	}
	unix.Kill(launchd, unix.SIGKILL)
	unix.Kill(pidInit, unix.SIGKILL)
	return 0
}

// coldStart starts the container, records its pid in .init.pid and waits
// for the shellspawn socket as upstream does: polling once a second, up to
// 15 s, and going on even if it never appears. It returns darlingserver's
// pid.
func coldStart() int {
	sock := prefix + sockPath
	unix.Unlink(sock)
	setupWorkdir()
	pidInit := spawnInitProcess()
	putInitPid(pidInit)
	// Wait until shellspawn starts
	for i := 0; i < 15; i++ {
		if unix.Access(sock, unix.F_OK) == nil {
			break
		}
		time.Sleep(time.Second)
	}
	return pidInit
}

// joinContainer stands in for upstream joining the container's mount
// namespace (setns): a Go process cannot, so connectToShellspawn goes
// through /proc/<pid>/root instead; only upstream's failure to open the
// namespace is kept.
func joinContainer(pidInit int) {
	if fd, err := unix.Open(fmt.Sprintf("/proc/%d/ns/mnt", pidInit), unix.O_RDONLY|unix.O_CLOEXEC, 0); err != nil {
		die("Cannot open mnt namespace file: %s", strerror(err))
	} else {
		unix.Close(fd)
	}
}

// runCommand runs argv[1:] in the container: `shell [ARGS…]`, `exec PATH
// [ARGS…]` or `PATH [ARGS…]`, PATH resolved on the host and reached
// through /Volumes/SystemRoot. The spawns do not return; the exit code is
// for a command that could not be run.
func runCommand(pidInit int, argv []string) int {
	if argv[1] == "shell" {
		if len(argv) > 2 {
			spawnShell(pidInit, argv[2:])
		} else {
			spawnShell(pidInit, nil)
		}
		return 0
	}
	doExec := argv[1] == "exec"
	idx := 1
	if doExec {
		idx = 2
		if len(argv) <= 2 {
			fmt.Println("'exec' subcommand requires a binary to execute.")
			return 1
		}
	}
	path, err := realpath(argv[idx])
	if err != nil {
		fmt.Printf("'%s' is not a supported command or a file.\n", argv[idx])
		return 1
	}
	args := append([]string{systemRoot + path}, argv[idx+1:]...)
	if doExec {
		spawnBinary(pidInit, args[0], args)
	} else {
		spawnShell(pidInit, args)
	}
	return 0
}

func realpath(p string) (string, error) {
	abs, err := filepath.Abs(p)
	if err != nil {
		return "", err
	}
	r, err := filepath.EvalSymlinks(abs)
	if err != nil {
		return "", err
	}
	if _, err := os.Stat(r); err != nil {
		return "", err
	}
	return r, nil
}

// scanInt is fscanf's "%d": leading white space, a sign, digits.
func scanInt(s string) (int, bool) {
	s = strings.TrimLeft(s, " \t\n\v\f\r")
	end := 0
	if end < len(s) && (s[end] == '-' || s[end] == '+') {
		end++
	}
	start := end
	for end < len(s) && s[end] >= '0' && s[end] <= '9' {
		end++
	}
	if end == start {
		return 0, false
	}
	n, err := strconv.Atoi(s[:end])
	return n, err == nil
}

func showHelp(argv0 string) {
	fmt.Fprintf(os.Stderr, "This is Darling, translation layer for macOS software.\n\n")
	fmt.Fprintf(os.Stderr, "Copyright (C) 2012-2023 Lubos Dolezel\n\n")
	fmt.Fprintf(os.Stderr, "Usage:\n")
	fmt.Fprintf(os.Stderr, "\t%s <program-path> [arguments...]\n", argv0)
	fmt.Fprintf(os.Stderr, "\t%s shell [arguments...]\n", argv0)
	fmt.Fprintf(os.Stderr, "\t%s exec <program-path> [arguments...]\n", argv0)
	fmt.Fprintf(os.Stderr, "\t%s shutdown\n", argv0)
	fmt.Fprintf(os.Stderr, "\n")
	fmt.Fprintf(os.Stderr, "Environment variables:\n"+
		"DPREFIX - specifies the location of Darling prefix, defaults to ~/.darling\n")
}

func showVersion(argv0 string) {
	fmt.Fprintf(os.Stderr, "%s standin @ standin\n", argv0)
	fmt.Fprintf(os.Stderr, "Copyright (C) 2012-2023 Lubos Dolezel\n")
}

func missingSetuidRoot() {
	path, err := os.Readlink("/proc/self/exe")
	if err != nil {
		path = "darling"
	}
	fmt.Fprintf(os.Stderr, "Sorry, the `%s' binary is not setuid root, which is mandatory.\n", path)
	fmt.Fprintf(os.Stderr, "Darling needs this in order to create mount and PID namespaces and to perform mounts.\n")
}

// getoptLong is glibc's getopt_long(argc, argv, "+", {help, version}):
// it stops at the first non-option, reports unknown options on stderr and
// goes on. Upstream ignores what it returns except --help and --version,
// and then looks at argv[1] whatever the options were.
func getoptLong(argv []string) {
	longOpts := []string{"help", "version"}
	for _, a := range argv[1:] {
		if a == "--" || !strings.HasPrefix(a, "-") || a == "-" {
			return
		}
		if !strings.HasPrefix(a, "--") {
			for _, c := range a[1:] {
				fmt.Fprintf(os.Stderr, "%s: invalid option -- '%c'\n", argv[0], c)
			}
			continue
		}
		name, _, hasVal := strings.Cut(a[2:], "=")
		found := ""
		for _, o := range longOpts {
			if o == name {
				found = o
				break
			}
		}
		if found == "" {
			// Prefixes of both are not ambiguous for glibc: the two
			// options have the same has_arg, flag and val.
			for _, o := range longOpts {
				if strings.HasPrefix(o, name) {
					found = o
					break
				}
			}
		}
		switch {
		case found == "":
			fmt.Fprintf(os.Stderr, "%s: unrecognized option '%s'\n", argv[0], a)
		case hasVal:
			fmt.Fprintf(os.Stderr, "%s: option '--%s' doesn't allow an argument\n", argv[0], found)
		case found == "help":
			showHelp(argv[0])
			exit(0)
		default:
			showVersion(argv[0])
			exit(0)
		}
	}
}

// asUser runs f with the caller's effective uid and gid (upstream's
// seteuid/setegid around work on the prefix).
func asUser(f func()) {
	if origUID == 0 && origGID == 0 {
		f()
		return
	}
	syscall.Setegid(origGID)
	syscall.Seteuid(origUID)
	f()
	syscall.Seteuid(0)
	syscall.Setegid(0)
}

func createDir(path string) {
	st, err := os.Stat(path)
	if err == nil {
		if !st.IsDir() {
			die("%s already exists and is a file. Remove the file.", path)
		}
		return
	}
	if errors.Is(err, unix.ENOENT) {
		if err := unix.Mkdir(path, 0o755); err != nil {
			die("Cannot create %s: %s", path, strerror(err))
		}
		return
	}
	die("Cannot access %s: %s", path, strerror(err))
}

func setupWorkdir() {
	w := strings.TrimRight(prefix, "/")
	createDir(w + ".workdir")
}

// checkPrefixDir reports whether the prefix exists.
func checkPrefixDir() bool {
	st, err := os.Stat(prefix)
	if err == nil {
		if !st.IsDir() {
			die("%s is a file. Remove the file.", prefix)
		}
		return true
	}
	if errors.Is(err, unix.ENOENT) {
		return false
	}
	die("Cannot access %s: %s", prefix, strerror(err))
	return false
}

func setupPrefix() {
	dirs := []string{
		"/Volumes", "/Applications", "/usr", "/usr/local", "/usr/local/share",
		"/private", "/private/var", "/private/var/log", "/private/var/db", "/private/etc",
		"/var", "/var/run", "/var/tmp", "/var/log",
	}
	fmt.Fprintf(os.Stderr, "Setting up a new Darling prefix at %s\n", prefix)
	asUser(func() {
		createDir(prefix)
		for _, d := range dirs {
			createDir(prefix + "/" + d)
		}
		pw, err := user.LookupId(strconv.Itoa(origUID))
		if err != nil {
			die("Failed to find Linux /etc/passwd entry for current user")
		}
		files := []struct{ name, body string }{
			{"/private/etc/passwd", fmt.Sprintf("root:*:0:0:System Administrator:/var/root:/bin/sh\n"+
				"%s:*:%s:%s:Darling User:/Users/%s:/bin/bash\n", pw.Username, pw.Uid, pw.Gid, pw.Username)},
			{"/private/etc/master.passwd", fmt.Sprintf("root:*:0:0::0:0:System Administrator:/var/root:/bin/sh\n"+
				"%s:*:%s:%s::0:0:Darling User:/Users/%s:/bin/bash\n", pw.Username, pw.Uid, pw.Gid, pw.Username)},
			{"/private/etc/group", fmt.Sprintf("wheel:*:0:root,%s\n%s:*:%s:%s\n", pw.Username, pw.Username, pw.Gid, pw.Username)},
		}
		for _, f := range files {
			if err := os.WriteFile(prefix+"/"+f.name, []byte(f.body), 0o666); err != nil {
				die("Failed to open %s within the prefix", f.name)
			}
		}
	})
}

func checkPrefixOwner() {
	var st unix.Stat_t
	err := unix.Stat(prefix, &st)
	if err == nil {
		if origUID != 0 && int(st.Uid) != origUID {
			die("You do not own the prefix directory.")
		}
	} else if errors.Is(err, unix.EACCES) {
		die("You do not own the prefix directory.")
	}
}

// getInitProcess is darling.c's: the pid in P/.init.pid if that process
// exists, is named darlingserver and (for a non-root caller) has the
// caller's uids and gids; otherwise the file is deleted and 0 returned.
func getInitProcess() int {
	pidPath := prefix + "/.init.pid"
	b, err := os.ReadFile(pidPath)
	if err != nil {
		return 0
	}
	pid, ok := scanInt(string(b))
	if !ok {
		os.Remove(pidPath)
		return 0
	}
	if unix.Kill(pid, 0) != nil {
		os.Remove(pidPath)
		return 0
	}
	comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	if err != nil || len(strings.Fields(string(comm))) == 0 || strings.Fields(string(comm))[0] != "darlingserver" {
		os.Remove(pidPath)
		return 0
	}
	if origUID != 0 {
		status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil {
			os.Remove(pidPath)
			return 0
		}
		uidMatch, gidMatch := false, false
		for _, line := range strings.Split(string(status), "\n") {
			f := strings.Fields(line)
			if len(f) != 5 || (f[0] != "Uid:" && f[0] != "Gid:") {
				continue
			}
			want := strconv.Itoa(origUID)
			if f[0] == "Gid:" {
				want = strconv.Itoa(origGID)
			}
			m := f[1] == want && f[2] == want && f[3] == want && f[4] == want
			if f[0] == "Uid:" {
				uidMatch = m
			} else {
				gidMatch = m
			}
		}
		if !uidMatch || !gidMatch {
			os.Remove(pidPath)
			return 0
		}
	}
	return pid
}

// spawnInitProcess starts darlingserver (through a link of that name, so
// its comm is darlingserver) with the launcher's stdio, in new UTS, IPC and
// mount namespaces, and waits until it says it is ready (or dies).
func spawnInitProcess() int {
	self, err := os.Executable()
	if err != nil {
		die("Failed to start darlingserver")
	}
	install, err := ensureInstall(self)
	if err != nil {
		fmt.Fprintf(os.Stderr, "darling-standin: %v\n", err)
		die("Failed to start darlingserver")
	}
	r, w, err := os.Pipe()
	if err != nil {
		die("Cannot create a pipe for synchronization: %s", strerror(err))
	}
	fix := "0"
	if fixPerms {
		fix = "1"
	}
	attr := &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWUTS | syscall.CLONE_NEWIPC | syscall.CLONE_NEWNS}
	if origUID != 0 || origGID != 0 {
		attr.Credential = &syscall.Credential{Uid: 0, Gid: 0, NoSetGroups: true}
	}
	p, err := os.StartProcess(filepath.Join(install, "bin", "darlingserver"),
		[]string{"darlingserver", prefix, strconv.Itoa(origUID), strconv.Itoa(origGID), "3", fix},
		&os.ProcAttr{Files: []*os.File{os.Stdin, os.Stdout, os.Stderr, w}, Sys: attr})
	w.Close()
	if err != nil {
		die("Cannot fork() to create darling-init: %s", strerror(err))
	}
	var b [1]byte
	r.Read(b[:])
	r.Close()
	pid := p.Pid
	p.Release()
	return pid
}

func putInitPid(pid int) {
	asUser(func() {
		if err := os.WriteFile(prefix+"/.init.pid", []byte(strconv.Itoa(pid)), 0o666); err != nil {
			var pe *os.PathError
			if errors.As(err, &pe) {
				err = pe.Err
			}
			fmt.Fprintf(os.Stderr, "Cannot write out PID of the init process: %s\n", strerror(err))
		}
	})
}
