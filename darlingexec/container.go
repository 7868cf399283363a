package darlingexec

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// initPidFile is where Darling's launcher records the host pid of the
// prefix's darlingserver. It lies in the prefix, so every session can
// write it (it is /.init.pid in the session's view): its content is a
// claim to verify, never a fact.
const initPidFile = ".init.pid"

// maxInitPid bounds what is read of .init.pid: a pid and a little
// whitespace.
const maxInitPid = 32

// container is the prefix's darlingserver once verified: its pid and its
// start time, so that a reused pid is never taken for it, and the id of
// the mount at the prefix in its mount namespace (Darling's overlay).
type container struct {
	pid   int
	start uint64
	mnt   uint64
}

// containerPid returns the pid of the prefix's running container, or 0.
func (l *Launcher) containerPid() int { return l.verified().pid }

// Container returns the prefix's running container, verified as for a
// session, and when it started: the server's status and metrics show
// them, so an operator sees a container that restarted. ok is false when
// none runs; since is zero if the clock cannot be read.
func (l *Launcher) Container() (pid int, since time.Time, ok bool) {
	c := l.verified()
	if c.pid == 0 {
		return 0, time.Time{}, false
	}
	// /proc/<pid>/stat counts the start in USER_HZ ticks of CLOCK_BOOTTIME
	// (the kernel ABI fixes USER_HZ at 100 on the architectures Go runs
	// Linux on); the wall clock's boot time is now less that clock.
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return c.pid, time.Time{}, true
	}
	const userHZ = 100
	up := time.Duration(ts.Nano()) - time.Duration(c.start)*(time.Second/userHZ)
	return c.pid, time.Now().Add(-up).Round(10 * time.Millisecond), true
}

// verified returns the prefix's running container, or the zero container.
// A container verified once stays trusted while it lives, whatever a
// session writes into .init.pid since; otherwise .init.pid is read and
// the process it names is verified as Darling's own launcher does and
// more (see verifyContainer).
func (l *Launcher) verified() container {
	l.contMu.Lock()
	defer l.contMu.Unlock()
	if c := l.cont; c.pid != 0 {
		if startTime(c.pid) == c.start {
			return c
		}
		l.cont = container{}
	}
	pid, err := readInitPid(l.Prefix)
	if err != nil {
		if msg := err.Error(); msg != l.unreadable {
			l.unreadable = msg
			l.Log.Warn("cannot take the prefix's .init.pid", "prefix", l.Prefix, "err", err)
		}
		return container{}
	}
	if pid == 0 {
		return container{}
	}
	c, err := verifyContainer(pid, l.Prefix)
	if err != nil {
		if l.rejected != pid {
			l.rejected = pid
			l.Log.Warn("not taking the process .init.pid names for the prefix's container",
				"prefix", l.Prefix, "pid", pid, "reason", err)
		}
		return container{}
	}
	l.cont = c
	return c
}

// openPrefixDir opens the prefix folder itself, as the host sees it. The
// prefix path is the operator's; only what lies inside it is the
// sessions'.
func openPrefixDir(prefix string) (int, error) {
	fd, err := unix.Open(prefix, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("open prefix %s: %w", prefix, err)
	}
	return fd, nil
}

// beneath resolves a name inside dir without following any symlink or
// magic link and without leaving dir or its filesystem: what a session
// planted there is never followed.
const beneath = unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS | unix.RESOLVE_NO_XDEV

// readSmallFile reads at most limit bytes of the regular file name inside
// dir, without blocking (a FIFO or a device planted there is refused, not
// read) and without following links. It reports an error if the file holds
// more than limit bytes.
func readSmallFile(dir int, name string, limit int) ([]byte, error) {
	// Looked at first without opening it (O_PATH): opening a device or a
	// FIFO a session planted could block or have effects.
	pfd, err := unix.Openat2(dir, name, &unix.OpenHow{
		Flags:   unix.O_PATH | unix.O_NOFOLLOW | unix.O_CLOEXEC,
		Resolve: beneath,
	})
	if err != nil {
		return nil, err
	}
	defer unix.Close(pfd)
	var st unix.Stat_t
	if err := unix.Fstat(pfd, &st); err != nil {
		return nil, err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil, fmt.Errorf("%s is not a regular file (mode %#o)", name, st.Mode&unix.S_IFMT)
	}
	// The same file, opened for reading through its O_PATH descriptor.
	fd, err := unix.Open("/proc/self/fd/"+strconv.Itoa(pfd), unix.O_RDONLY|unix.O_NONBLOCK|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	buf := make([]byte, limit+1)
	n := 0
	for n < len(buf) {
		m, err := unix.Pread(fd, buf[n:], int64(n))
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, err
		}
		if m == 0 {
			break
		}
		n += m
	}
	if n > limit {
		return nil, fmt.Errorf("%s holds more than %d bytes", name, limit)
	}
	return buf[:n], nil
}

// readInitPid returns the pid P/.init.pid names, or 0 if there is none.
// Darling writes it without a newline; whitespace around it is allowed.
func readInitPid(prefix string) (int, error) {
	dir, err := openPrefixDir(prefix)
	if err != nil {
		return 0, err
	}
	defer unix.Close(dir)
	b, err := readSmallFile(dir, initPidFile, maxInitPid)
	if errors.Is(err, unix.ENOENT) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read %s in %s: %w", initPidFile, prefix, err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("%s in %s holds %q, not a pid", initPidFile, prefix, b)
	}
	return pid, nil
}

// verifyContainer checks that pid is the prefix's darlingserver, reading
// everything through one open /proc/<pid> folder so that a pid reused
// meanwhile fails the reads instead of answering for another process:
//   - its comm is "darlingserver" and it runs as our uid (what Darling's
//     launcher itself checks before trusting .init.pid);
//   - it is not confined to a folder (its root is ours), and lives in a
//     mount namespace other than ours, where something is mounted at the
//     prefix: darlingserver's overlay. A session's process, a stale pid
//     after a reboot, another prefix's container, or any other process
//     fails one of these.
func verifyContainer(pid int, prefix string) (container, error) {
	proc, err := openProcDir(pid)
	if err != nil {
		return container{}, err
	}
	defer unix.Close(proc)
	stat, err := readProcFile(proc, "stat", 4096)
	if err != nil {
		return container{}, err
	}
	p, ok := parseStat(stat)
	if !ok {
		return container{}, errors.New("not running")
	}
	if err := checkDarlingserver(proc); err != nil {
		return container{}, err
	}
	if err := checkOwnMountNamespace(proc); err != nil {
		return container{}, err
	}
	// A session's launcher that found no .init.pid (the session's own
	// command, or another session, had just removed it) cold-starts a
	// container of its own, which writes its pid there and inherits the
	// session's marker: it holds that session's output and ends with it.
	// The warm-up's launcher carries no marker.
	if env, err := readProcFile(proc, "environ", maxEnviron); err == nil && sessionOf(env) != "" {
		return container{}, errors.New("a session's launcher started it (its environment holds a session marker), not the warm-up")
	}
	// Darling's launcher starts darlingserver from its caller's PID
	// namespace, so its parent (the launcher, or the init that adopted it)
	// lives in ours. Every process of a session descends from launchd,
	// which has a PID namespace of its own, and so does the parent of any
	// session process, even one orphaned on purpose.
	if err := parentInOurPIDNamespace(p.ppid); err != nil {
		return container{}, err
	}
	mnt, err := containerMount(proc, prefix)
	if err != nil {
		return container{}, err
	}
	// The same process all along: its start time has not changed.
	if startTime(pid) != p.start {
		return container{}, errors.New("it exited meanwhile")
	}
	return container{pid: pid, start: p.start, mnt: mnt}, nil
}

// checkDarlingserver checks what Darling's launcher itself checks before
// trusting .init.pid: the process is darlingserver, run as our uid.
func checkDarlingserver(proc int) error {
	comm, err := readProcFile(proc, "comm", 64)
	if err != nil {
		return err
	}
	if name := strings.TrimSuffix(string(comm), "\n"); name != "darlingserver" {
		return fmt.Errorf("it is %q, not darlingserver", name)
	}
	status, err := readProcFile(proc, "status", 16<<10)
	if err != nil {
		return err
	}
	if uid := statusField(status, "Uid:"); len(uid) == 0 || uid[0] != strconv.Itoa(os.Getuid()) {
		return fmt.Errorf("it runs as uid %v, not as ours (%d)", uid, os.Getuid())
	}
	return nil
}

// checkOwnMountNamespace checks that the process is not confined to a
// folder (its root is ours) and has a mount namespace of its own.
func checkOwnMountNamespace(proc int) error {
	var theirs, ours unix.Stat_t
	if err := unix.Fstatat(proc, "root/", &theirs, 0); err != nil {
		return fmt.Errorf("its root: %w", err)
	}
	if err := unix.Stat("/", &ours); err != nil {
		return err
	}
	if theirs.Dev != ours.Dev || theirs.Ino != ours.Ino {
		return errors.New("it is confined to a folder (its root is not ours)")
	}
	theirNS, err1 := readlinkat(proc, "ns/mnt")
	ourNS, err2 := os.Readlink("/proc/self/ns/mnt")
	if err1 != nil || err2 != nil {
		return fmt.Errorf("mount namespace: %w", errors.Join(err1, err2))
	}
	if theirNS == ourNS {
		return errors.New("it shares our mount namespace")
	}
	return nil
}

// containerMount returns the id of the mount at the prefix in the
// process's mount namespace: darlingserver's overlay. A mount at the
// prefix that the host has too is not the container's own (another
// prefix's darlingserver would show it as well).
func containerMount(proc int, prefix string) (uint64, error) {
	real, err := filepath.EvalSymlinks(prefix)
	if err != nil {
		return 0, err
	}
	mf, err := openProcFile(proc, "mountinfo")
	if err != nil {
		return 0, err
	}
	defer mf.Close()
	mnt, err := mountAt(io.LimitReader(mf, maxMountinfo), real)
	if err != nil {
		return 0, fmt.Errorf("read its mountinfo: %w", err)
	}
	if mnt.id == 0 {
		return 0, fmt.Errorf("nothing is mounted at %s in its mount namespace", real)
	}
	if ours, err := os.Open("/proc/self/mountinfo"); err == nil {
		host, _ := mountAt(io.LimitReader(ours, maxMountinfo), real)
		ours.Close()
		if host.id != 0 && host.source == mnt.source {
			return 0, fmt.Errorf("the mount at %s is the host's, not a container's", real)
		}
	}
	return mnt.id, nil
}

// parentInOurPIDNamespace checks that the process ppid lives in our PID
// namespace: its NSpid line lists as many pids as ours (one per namespace
// level, as /proc sees them). The namespace links themselves may not be
// readable (pid 1's, in some sandboxes); the status files are.
func parentInOurPIDNamespace(ppid int) error {
	if ppid == 0 {
		return nil // adopted from outside our namespace: not a container's
	}
	theirs, err1 := pidNamespaceDepth(strconv.Itoa(ppid))
	ours, err2 := pidNamespaceDepth("self")
	if err1 != nil || err2 != nil {
		return fmt.Errorf("its parent's PID namespace: %w", errors.Join(err1, err2))
	}
	if theirs != ours {
		return fmt.Errorf("its parent %d lives in another PID namespace: it is a container's process, not darlingserver", ppid)
	}
	return nil
}

// pidNamespaceDepth returns how many PID namespaces the process proc (a
// pid, or "self") is seen in: the pids on its NSpid line.
func pidNamespaceDepth(proc string) (int, error) {
	b, err := os.ReadFile("/proc/" + proc + "/status")
	if err != nil {
		return 0, err
	}
	return len(statusField(b, "NSpid:")), nil
}

// openProcDir opens /proc/<pid> as a handle that answers for that process
// only: reads through it fail once the process is gone, even if its pid
// is reused.
func openProcDir(pid int) (int, error) {
	fd, err := unix.Open("/proc/"+strconv.Itoa(pid), unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("no such process: %w", err)
	}
	return fd, nil
}

// maxMountinfo bounds how much of a mountinfo is read.
const maxMountinfo = 4 << 20

func openProcFile(proc int, name string) (*os.File, error) {
	fd, err := unix.Openat(proc, name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("read its %s: %w", name, err)
	}
	return os.NewFile(uintptr(fd), name), nil
}

// readProcFile reads at most limit bytes of /proc/<pid>/name.
func readProcFile(proc int, name string, limit int64) ([]byte, error) {
	f, err := openProcFile(proc, name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, limit))
	if err != nil {
		return nil, fmt.Errorf("read its %s: %w", name, err)
	}
	return b, nil
}

func readlinkat(dir int, name string) (string, error) {
	buf := make([]byte, 256)
	n, err := unix.Readlinkat(dir, name, buf)
	if err != nil {
		return "", err
	}
	return string(buf[:n]), nil
}

// statusField returns the fields of the line of a /proc/<pid>/status that
// starts with key ("Uid:", "NSpid:"), or none.
func statusField(status []byte, key string) []string {
	for line := range bytes.Lines(status) {
		if rest, ok := bytes.CutPrefix(line, []byte(key)); ok {
			return strings.Fields(string(rest))
		}
	}
	return nil
}

// mountInfo is a mount at a path: its id, and what it mounts (device,
// root, type and source), which is the same in every namespace it is
// copied to.
type mountInfo struct {
	id     uint64
	source string
}

// mountAt returns the topmost mount at path in a mountinfo; its id is 0
// if there is none. Darling mounts an overlay there; the type is not
// required, the mount is.
// splitMountinfo splits a mountinfo line ("ID parent major:minor root
// mountpoint options [optional…] - fstype source super") into its fields,
// and returns those after the separator too (none without one).
func splitMountinfo(line string) (fields, fs []string) {
	f := strings.Fields(line)
	for i := 6; i < len(f); i++ {
		if f[i] == "-" {
			return f, f[i+1:]
		}
	}
	return f, nil
}

func mountAt(r io.Reader, path string) (mountInfo, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), 64<<10)
	var m mountInfo
	for sc.Scan() {
		f, fs := splitMountinfo(sc.Text())
		if len(f) < 7 || unescapeMountinfo(f[4]) != path {
			continue
		}
		v, err := strconv.ParseUint(f[0], 10, 64)
		if err != nil {
			continue
		}
		src := f[2] + " " + f[3]
		if len(fs) >= 2 {
			src += " " + fs[0] + " " + fs[1]
		}
		m = mountInfo{id: v, source: src} // later lines are mounted over earlier ones
	}
	return m, sc.Err()
}

// unescapeMountinfo undoes mountinfo's octal escapes (\040 for a space).
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// openContainerView opens the prefix as the container's processes see it:
// the overlay Darling mounts at the prefix, reached through the verified
// container's root without following any link on the way (a session
// cannot plant one there that leads elsewhere), and checked to be the very
// mount verifyContainer found there.
func openContainerView(c container, prefix string) (int, error) {
	real, err := filepath.EvalSymlinks(prefix)
	if err != nil {
		return -1, err
	}
	proc, err := openProcDir(c.pid)
	if err != nil {
		return -1, err
	}
	defer unix.Close(proc)
	root, err := unix.Openat(proc, "root", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("open the container's root: %w", err)
	}
	defer unix.Close(root)
	// Still the verified process: a pid reused since fails here.
	if startTime(c.pid) != c.start {
		return -1, errors.New("the container exited")
	}
	fd, err := unix.Openat2(root, strings.TrimPrefix(real, "/"), &unix.OpenHow{
		Flags:   unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
	})
	if err != nil {
		return -1, fmt.Errorf("open %s in the container: %w", real, err)
	}
	var st unix.Statx_t
	err = unix.Statx(fd, "", unix.AT_EMPTY_PATH, unix.STATX_MNT_ID, &st)
	if err == nil && st.Mask&unix.STATX_MNT_ID == 0 {
		// Before Linux 5.8 there is no mount id: an overlay will do.
		var fs unix.Statfs_t
		if err = unix.Fstatfs(fd, &fs); err == nil && fs.Type == unix.OVERLAYFS_SUPER_MAGIC {
			return fd, nil
		}
	}
	if err != nil || st.Mnt_id != c.mnt {
		unix.Close(fd)
		return -1, fmt.Errorf("%s in the container is not the mount found there (%v)", real, err)
	}
	return fd, nil
}

// openView opens the prefix as its own processes see it: through the
// running container when there is one, else the prefix folder itself.
func (l *Launcher) openView() (fd int, viaContainer bool, err error) {
	if c := l.verified(); c.pid != 0 {
		fd, err := openContainerView(c, l.Prefix)
		if err == nil {
			return fd, true, nil
		}
		l.Log.Warn("cannot open the prefix through its container", "prefix", l.Prefix, "err", err)
		return -1, false, err
	}
	fd, err = openPrefixDir(l.Prefix)
	return fd, false, err
}

// repairInitPid rewrites P/.init.pid to name the verified container when
// it names anything else or is not a regular file: a session may have
// replaced it, and Darling's own launcher, which reads it with a blocking
// open, would then hang on a FIFO or start a second container. The new
// file replaces the old by rename, which never follows what it replaces.
func (l *Launcher) repairInitPid(pid int) {
	dir, err := openPrefixDir(l.Prefix)
	if err != nil {
		return
	}
	defer unix.Close(dir)
	want := strconv.Itoa(pid)
	if b, err := readSmallFile(dir, initPidFile, maxInitPid); err == nil && strings.TrimSpace(string(b)) == want {
		return
	}
	var r [8]byte
	if _, err := rand.Read(r[:]); err != nil {
		return
	}
	tmp := initPidFile + ".darling-sshd-" + hex.EncodeToString(r[:])
	fd, err := unix.Openat2(dir, tmp, &unix.OpenHow{
		Flags:   unix.O_WRONLY | unix.O_CREAT | unix.O_EXCL | unix.O_NOFOLLOW | unix.O_CLOEXEC,
		Mode:    0o644,
		Resolve: beneath,
	})
	if err == nil {
		_, err = unix.Write(fd, []byte(want))
		unix.Close(fd)
	}
	if err == nil {
		err = unix.Renameat(dir, tmp, dir, initPidFile)
		if errors.Is(err, unix.EISDIR) || errors.Is(err, unix.ENOTEMPTY) || errors.Is(err, unix.EEXIST) {
			// A folder planted there: swap it out, and remove it if it
			// is empty (a full one stays, under the temporary name).
			if err = unix.Renameat2(dir, tmp, dir, initPidFile, unix.RENAME_EXCHANGE); err == nil {
				if unix.Unlinkat(dir, tmp, unix.AT_REMOVEDIR) != nil {
					l.Log.Warn("a folder was planted at the prefix's .init.pid; moved aside", "prefix", l.Prefix, "name", tmp)
				}
				tmp = ""
			}
		}
	}
	if err != nil {
		if tmp != "" {
			_ = unix.Unlinkat(dir, tmp, 0)
		}
		l.Log.Warn("cannot repair the prefix's .init.pid", "prefix", l.Prefix, "err", err)
		return
	}
	l.Log.Warn("repaired the prefix's .init.pid: it did not name the running container",
		"prefix", l.Prefix, "pid", pid)
}
