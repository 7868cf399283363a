package darlingexec

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Cgroups is a cgroup v2 folder the server creates its sessions' cgroups
// in. A process Darling starts for a session is not the server's child,
// and may clear its environment and leave its parent at once (Nix starts
// builders with the derivation's environment only; a daemon double-forks):
// the marker and parentage tracker can lose it. A process cannot leave its
// cgroup on its own, and all its children start in it, so a session whose
// first process is put in a cgroup of its own before the client's command
// runs keeps everything it starts.
type Cgroups struct {
	dir     string // where the sessions' cgroups are made
	created bool   // dir is ours to remove at Close
}

// FindCgroups finds the server's own cgroup v2 and makes it ready for
// sessions. In a delegated cgroup (systemd's Delegate=yes) the server
// moves itself into a leaf, server/, so that the cgroup can enable
// controllers for the sessions (a cgroup with processes of its own
// cannot); in the root cgroup it makes darling-sshd.<pid>/ for them. The
// error says why sessions cannot have cgroups here.
func FindCgroups() (*Cgroups, error) {
	mnt, err := cgroup2Mount()
	if err != nil {
		return nil, err
	}
	rel, err := ownCgroup()
	if err != nil {
		return nil, err
	}
	own := filepath.Join(mnt, rel)
	c := &Cgroups{dir: own}
	if rel == "/" {
		c.dir, c.created = filepath.Join(own, "darling-sshd."+strconv.Itoa(os.Getpid())), true
		removeEmpty(c.dir) // one a killed server of the same pid left
		base := c.dir
		err := os.Mkdir(c.dir, 0o755)
		for n := 1; errors.Is(err, fs.ErrExist) && n < 10; n++ {
			// Its sessions' processes outlived it: a name of our own.
			c.dir = base + "-" + strconv.Itoa(n)
			removeEmpty(c.dir)
			err = os.Mkdir(c.dir, 0o755)
		}
		if err != nil {
			return nil, fmt.Errorf("make %s: %w", c.dir, err)
		}
	} else if err := c.leaveForLeaf(); err != nil {
		return nil, err
	}
	enableControllers(c.dir)
	probe := filepath.Join(c.dir, "s-probe") // s-: removeEmpty's, if we die here
	if err := os.Mkdir(probe, 0o755); err != nil {
		c.Close()
		return nil, fmt.Errorf("make a session cgroup in %s: %w", c.dir, err)
	}
	os.Remove(probe)
	return c, nil
}

// leaveForLeaf moves the server into dir/server.
func (c *Cgroups) leaveForLeaf() error {
	leaf := filepath.Join(c.dir, "server")
	if err := os.Mkdir(leaf, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("make %s: %w", leaf, err)
	}
	if err := writeCgroupFile(filepath.Join(leaf, "cgroup.procs"), strconv.Itoa(os.Getpid())); err != nil {
		return fmt.Errorf("move the server into %s: %w", leaf, err)
	}
	return nil
}

// enableControllers turns on what of cpu and memory dir has for its
// children: the sessions' CPU time and memory peak. Without them the
// sessions still get cgroup.kill and cgroup.events.
func enableControllers(dir string) {
	b, err := readBounded(filepath.Join(dir, "cgroup.controllers"), 4096)
	if err != nil {
		return
	}
	for _, ctl := range strings.Fields(string(b)) {
		if ctl == "cpu" || ctl == "memory" {
			_ = writeCgroupFile(filepath.Join(dir, "cgroup.subtree_control"), "+"+ctl)
		}
	}
}

// Close removes the folder FindCgroups made, and the cgroups left in it
// of sessions that are gone: a session the server stopped waiting for at
// shutdown has no one left to remove its own.
func (c *Cgroups) Close() {
	if c != nil && c.created {
		removeEmpty(c.dir)
	}
}

// removeEmpty removes dir, a cgroup of ours, and the session cgroups in
// it that hold no process; one that still does stays, and so does dir.
func removeEmpty(dir string) {
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if e.IsDir() && strings.HasPrefix(e.Name(), "s-") {
			_ = unix.Rmdir(filepath.Join(dir, e.Name()))
		}
	}
	_ = unix.Rmdir(dir)
}

// Dir is where the sessions' cgroups are made.
func (c *Cgroups) Dir() string { return c.dir }

// cgroup2Mount returns where the cgroup v2 hierarchy is mounted.
func cgroup2Mount() (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(io.LimitReader(f, maxMountinfo))
	for sc.Scan() {
		if f, fs := splitMountinfo(sc.Text()); len(f) >= 5 && len(fs) > 0 && fs[0] == "cgroup2" {
			return unescapeMountinfo(f[4]), nil
		}
	}
	return "", errors.New("no cgroup v2 hierarchy is mounted")
}

// ownCgroup returns the server's cgroup v2 path, from its "0::" line.
func ownCgroup() (string, error) {
	b, err := readBounded("/proc/self/cgroup", 64<<10)
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rel, ok := strings.CutPrefix(line, "0::"); ok && strings.HasPrefix(rel, "/") {
			return rel, nil
		}
	}
	return "", errors.New("the server is in no cgroup v2")
}

// sessionCgroup is one session's cgroup.
type sessionCgroup struct{ dir string }

// newSession makes the cgroup for session id.
func (c *Cgroups) newSession(id string) (*sessionCgroup, error) {
	dir := filepath.Join(c.dir, "s-"+id)
	if err := os.Mkdir(dir, 0o755); err != nil {
		return nil, fmt.Errorf("make session cgroup: %w", err)
	}
	return &sessionCgroup{dir: dir}, nil
}

// add moves the process pid, which started at start, into the cgroup.
// cgroup.procs takes a bare pid, so the process is held by a pidfd across
// the write: if it is still alive afterwards, the pid named it all along.
func (sc *sessionCgroup) add(pid int, start uint64) error {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if !startedAt(pid, start) {
		return errNotOurs
	}
	if err := writeCgroupFile(filepath.Join(sc.dir, "cgroup.procs"), strconv.Itoa(pid)); err != nil {
		return err
	}
	if err := unix.PidfdSendSignal(fd, 0, nil, 0); err != nil {
		return fmt.Errorf("process %d exited while it was moved: %w", pid, err)
	}
	return nil
}

// procs returns the processes in the cgroup.
func (sc *sessionCgroup) procs() []int {
	b, err := readBounded(filepath.Join(sc.dir, "cgroup.procs"), 1<<20)
	if err != nil {
		return nil
	}
	var pids []int
	for _, f := range strings.Fields(string(b)) {
		if pid, err := strconv.Atoi(f); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids
}

// populated reports whether a process is left in the cgroup.
func (sc *sessionCgroup) populated() bool {
	b, err := readBounded(filepath.Join(sc.dir, "cgroup.events"), 4096)
	return err != nil || bytes.Contains(b, []byte("populated 1"))
}

// kill SIGKILLs every process in the cgroup, at once.
func (sc *sessionCgroup) kill() error {
	return writeCgroupFile(filepath.Join(sc.dir, "cgroup.kill"), "1")
}

// Usage is what a session's processes used, where its cgroup says.
type Usage struct {
	CPU        time.Duration // user and system time; 0 if unknown
	MemoryPeak int64         // bytes; 0 if unknown (no memory controller)
}

// usage reads the cgroup's CPU time and memory peak.
func (sc *sessionCgroup) usage() Usage {
	var u Usage
	if b, err := readBounded(filepath.Join(sc.dir, "cpu.stat"), 4096); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "usage_usec "); ok {
				n, _ := strconv.ParseInt(v, 10, 64)
				u.CPU = time.Duration(n) * time.Microsecond
			}
		}
	}
	if b, err := readBounded(filepath.Join(sc.dir, "memory.peak"), 64); err == nil {
		u.MemoryPeak, _ = strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	}
	return u
}

// remove removes the empty cgroup; it waits a little for the kernel to
// see the last process gone.
func (sc *sessionCgroup) remove() error {
	var err error
	for range 50 {
		if err = unix.Rmdir(sc.dir); err != unix.EBUSY {
			return err
		}
		time.Sleep(10 * time.Millisecond)
	}
	return err
}

// writeCgroupFile writes v to a cgroup interface file in one write, as
// the kernel wants.
func writeCgroupFile(path, v string) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteString(v)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// readBounded reads at most n bytes of a file.
func readBounded(path string, n int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, n))
}

// openGate makes the session's cgroup and, in a goroutine, moves the
// session's processes (its script's shell, waiting at the gate, and what
// started it in the container) into it, then sends the line the gate
// waits for; the client's stdin waits until then. Darling starts them in
// its container, so they are found by the session marker in their
// environment. Start does not wait: a launcher that hangs must not hold
// up the session, which ends it like any other. If no process shows up
// while the launcher runs, or the cgroup cannot be made, the session goes
// on without one, with the tracker as its only net, and the log says so.
func (p *Process) openGate(id string) {
	gate, stop := make(chan struct{}), make(chan struct{})
	p.Stdin.gate, p.gateStop = gate, stop
	cg, err := p.l.Cgroups.newSession(id)
	if err != nil {
		p.l.Log.Warn("session without a cgroup", "err", err)
	} else {
		p.procs.cg = cg
	}
	go func() {
		defer close(gate)
		if cg != nil && !p.enterCgroup(cg, stop) {
			return
		}
		if p.procs.inOtherContainer() {
			// Its command has not run: the script waits at the gate.
			// Ended now, the client sees the session fail rather than
			// hang on output that container holds (End waits for this
			// gate, so it runs apart).
			p.l.Log.Warn("a session's launcher started a container of its own (.init.pid was missing when it looked: a session had just removed it); ending the session and all it started", "pid", p.Pid())
			go p.End(context.Background())
			return
		}
		_, _ = p.Stdin.w.Write([]byte("\n"))
	}()
}

// enterCgroup moves the session's processes into cg, once they show up.
// It reports false if the session ended first.
func (p *Process) enterCgroup(cg *sessionCgroup, stop <-chan struct{}) bool {
	deadline := time.Now().Add(p.l.WarmTimeout)
	tick := time.NewTicker(gatePoll)
	defer tick.Stop()
	moved := map[int]bool{}
	for p.moveMarked(cg, moved) == 0 {
		select {
		case <-p.done:
			return false
		case <-stop:
			return false
		case <-tick.C:
		}
		if time.Now().After(deadline) {
			p.l.Log.Warn("no process of the session showed up in the container; it runs without a cgroup's hold", "pid", p.Pid())
			return true
		}
	}
	// A process forked between the scan and the move started outside:
	// scan again until a whole scan finds none of the session's left out.
	clean := false
	for range maxGatePasses {
		if p.moveMarked(cg, moved) == 0 {
			clean = true
			break
		}
	}
	p.procs.setHeld()
	if clean && p.procs.whole() {
		// From here on the cgroup holds all the session starts, however
		// it leaves its tree or clears its environment: the tracker's
		// walks of /proc would only cost CPU for as long as it runs.
		p.l.tracker.remove(p.procs)
	}
	return true
}

// gatePoll is how often enterCgroup looks for the session's processes.
const gatePoll = 5 * time.Millisecond

// maxGatePasses bounds the scans after the first move: a session that
// forks faster than they run is still held from the next one on.
const maxGatePasses = 8

// moveMarked moves the session's known processes not yet moved, but its
// launcher (ours, on the host), into cg and returns how many it moved.
// A process that does not descend from the prefix's container is moved
// too, and recorded (setElsewhere): its launcher found
// no .init.pid (a session had just removed it) and cold-started a second
// container of its own, which holds the session's stdout (Darling #1510)
// and whose shellspawn the session may never reach.
func (p *Process) moveMarked(cg *sessionCgroup, moved map[int]bool) int {
	n := 0
	c := p.procs.container()
	for _, pid := range p.l.tracker.scan(p.procs) {
		if moved[pid] || pid == p.Pid() || !inNestedPIDNamespace(pid) {
			continue // done, or ours on the host: not the container's
		}
		if c != 0 && outsideContainer(pid, c) {
			p.procs.setElsewhere()
		}
		start := p.procs.startOf(pid)
		if err := cg.add(pid, start); err != nil {
			p.l.Log.Debug("move into the session's cgroup", "pid", pid, "err", err)
			continue
		}
		moved[pid] = true
		n++
	}
	return n
}

// outsideContainer reports whether pid, a process of a nested PID
// namespace, does not belong to the container whose darlingserver is c:
// followed up through its parents, the first one in our PID namespace is
// not c (a container's launchd is darlingserver's own child). Where a
// read fails (a process ended meanwhile) it reports false.
func outsideContainer(pid, c int) bool {
	ours, err := pidNamespaceDepth("self")
	if err != nil {
		return false
	}
	for range maxParentWalk {
		st, ok := statOf(pid)
		if !ok || st.ppid <= 0 {
			return false
		}
		depth, err := pidNamespaceDepth(strconv.Itoa(st.ppid))
		if err != nil {
			return false
		}
		if depth <= ours {
			return st.ppid != c
		}
		pid = st.ppid
	}
	return false
}

// maxParentWalk bounds outsideContainer's walk up the process tree.
const maxParentWalk = 256

// waitEmpty waits until no process is left in the cgroup, for at most d
// or until ctx is done, and reports whether it is empty. The kernel says
// so by modifying cgroup.events ("populated 0"), watched with inotify: no
// walk of /proc, however many processes the session has.
func (sc *sessionCgroup) waitEmpty(ctx context.Context, d time.Duration) bool {
	fd, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
	if err != nil {
		return sc.pollEmpty(ctx, d)
	}
	f := os.NewFile(uintptr(fd), "inotify")
	defer f.Close()
	if _, err := unix.InotifyAddWatch(fd, filepath.Join(sc.dir, "cgroup.events"), unix.IN_MODIFY); err != nil {
		return sc.pollEmpty(ctx, d)
	}
	deadline := time.Now().Add(d)
	stop := context.AfterFunc(ctx, func() { _ = f.SetReadDeadline(time.Now()) })
	defer stop()
	buf := make([]byte, 4096)
	for sc.populated() {
		if ctx.Err() != nil || time.Now().After(deadline) {
			return false
		}
		_ = f.SetReadDeadline(deadline)
		if ctx.Err() != nil { // cancelled before the deadline above was set
			return false
		}
		if _, err := f.Read(buf); err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
			return sc.pollEmpty(ctx, time.Until(deadline))
		}
	}
	return true
}

// pollEmpty is waitEmpty without inotify.
func (sc *sessionCgroup) pollEmpty(ctx context.Context, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for sc.populated() {
		if ctx.Err() != nil || time.Now().After(deadline) {
			return false
		}
		time.Sleep(pollEvery)
	}
	return true
}
