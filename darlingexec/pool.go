package darlingexec

import (
	"context"
	"errors"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// A pool keeps launchers started ahead of the exec sessions that will use
// them (--prespawn). Every Nix remote build opens a new connection and so
// would pay a whole `darling shell` start (a launcher, a shellspawn fork
// in the container, bash --login through Darling's loader and the
// prefix's profile) before its command runs; none of that needs the
// client's command. A member has done all of it and waits, in its
// script, for one line on stdin: the path of a request file the server
// has just written into the prefix through the container's view. The
// file holds the session's environment and the usual session script; the
// member's shell runs it (it first removes itself), and the rest of stdin
// is the client's, byte-exact. Each member has its own marker from the
// start, so the tracker, the cgroup and the start marker work as for any
// session.
type pool struct {
	l    *Launcher
	size int

	mu     sync.Mutex
	idle   []*Process
	closed bool

	kick   chan struct{} // a member is wanted, or the container was warmed
	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{} // the refill loop has returned
}

// requestDir is the folder at the prefix's root that request files are
// written to, created by the server (0700) and verified each time: a
// session can replace it, and nothing is written through a link.
const requestDir = ".darling-sshd-requests"

// StartPool starts keeping n launchers ahead of the exec sessions, from
// the next warm-up on; n 0 keeps none. Close ends them. The pool needs
// session cgroups: a member is handed out only once its gate shows its
// processes in place, all in the prefix's container (see memberState);
// without them nothing tells a member that hangs, or runs in a container
// its launcher started itself, from one that waits.
func (l *Launcher) StartPool(n int) {
	if n <= 0 || l.pool != nil {
		return
	}
	if l.Cgroups == nil {
		l.Log.Warn("no launchers started ahead of the sessions (--prespawn): that needs session cgroups, and there are none", "prespawn", n)
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	pl := &pool{l: l, size: n, kick: make(chan struct{}, 1), ctx: ctx, cancel: cancel, done: make(chan struct{})}
	l.pool = pl
	go pl.refill()
	pl.wake()
}

// Close ends the pool's idle launchers, each with all it started, and
// waits for that. Sessions already handed out are not touched.
func (l *Launcher) Close() {
	pl := l.pool
	if pl == nil {
		return
	}
	pl.mu.Lock()
	pl.closed = true
	idle := pl.idle
	pl.idle = nil
	pl.mu.Unlock()
	pl.cancel()
	<-pl.done
	ctx, cancel := context.WithTimeout(context.Background(), l.KillGrace+5*time.Second)
	defer cancel()
	for _, p := range idle {
		p.discard(ctx)
	}
}

// wake asks the refill loop to look again.
func (pl *pool) wake() {
	select {
	case pl.kick <- struct{}{}:
	default:
	}
}

// refill starts members until the pool is full, whenever it is woken: at
// start, when a member is taken or dies, and after each warm-up. It never
// warms the prefix itself: a container that went away is started again by
// the next session that needs it, and the pool fills after that.
func (pl *pool) refill() {
	defer close(pl.done)
	pl.l.removeRequests()
	for {
		select {
		case <-pl.ctx.Done():
			return
		case <-pl.kick:
		}
		if !pl.fill() {
			return
		}
	}
}

// fill starts members until the pool is full or the container is not
// running. A failed start is tried again after refillBackoff, so that a
// launcher that cannot start (or a profile that exits at once) costs a
// try a second, not a loop. It returns false once the pool is closed.
func (pl *pool) fill() bool {
	for pl.wanted() && pl.l.containerPid() != 0 {
		p, err := pl.l.spawnMember(pl.ctx)
		if err != nil {
			if pl.ctx.Err() != nil {
				return false
			}
			pl.l.Log.Warn("cannot start a launcher ahead of the sessions; trying again", "err", err, "after", refillBackoff)
			select {
			case <-pl.ctx.Done():
				return false
			case <-time.After(refillBackoff):
			}
			continue
		}
		// Read before add publishes p: serve replaces it.
		gate := p.Stdin.gate
		if !pl.add(p) {
			p.discard(context.Background())
			return false
		}
		go pl.watch(p, gate)
	}
	return true
}

// refillBackoff is the wait after a member could not be started, or ended
// while idle.
const refillBackoff = time.Second

// wanted reports whether the pool has room.
func (pl *pool) wanted() bool {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	return !pl.closed && len(pl.idle) < pl.size
}

// add puts a member in the pool; false once the pool is closed.
func (pl *pool) add(p *Process) bool {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	if pl.closed {
		return false
	}
	pl.idle = append(pl.idle, p)
	return true
}

// watch drops a member whose launcher ends while it waits (its container
// went away), or whose gate opened on processes it cannot be handed out
// with (see memberState): it is not handed out, and its processes are
// ended. gate is the member's own.
func (pl *pool) watch(p *Process, gate <-chan struct{}) {
	select {
	case <-p.done:
	case <-gate:
		if !pl.dead(p) {
			<-p.done
		}
	}
	if !pl.remove(p) {
		return
	}
	p.discard(context.Background())
	switch {
	case p.procs.inOtherContainer():
		// Said when found (openGate).
	case isDone(p.done):
		pl.l.Log.Info("a launcher started ahead ended while idle; it will be replaced", "pid", p.Pid(), "status", p.status)
	default:
		pl.l.Log.Warn("a launcher started ahead never got its processes in place; ended it", "pid", p.Pid())
	}
	select {
	case <-pl.ctx.Done():
		return
	case <-time.After(refillBackoff):
	}
	pl.wake()
}

// dead reports whether p, while still idle, must be dropped (see
// memberState). Once handed out, a member is its session's.
func (pl *pool) dead(p *Process) bool {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	if !slices.Contains(pl.idle, p) {
		return false
	}
	_, dead := memberState(p)
	return dead
}

// PoolState reports how many launchers the pool keeps started ahead
// (--prespawn) and how many of them could take a session now.
func (l *Launcher) PoolState() (size, ready int) {
	pl := l.pool
	if pl == nil {
		return 0, 0
	}
	pl.mu.Lock()
	defer pl.mu.Unlock()
	for _, p := range pl.idle {
		if ok, _ := memberState(p); ok {
			ready++
		}
	}
	return pl.size, ready
}

// isDone reports whether ch is closed.
func isDone(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// remove takes p out of the idle members; false if it was not there.
func (pl *pool) remove(p *Process) bool {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	i := slices.Index(pl.idle, p)
	if i < 0 {
		return false
	}
	pl.idle = slices.Delete(pl.idle, i, i+1)
	return true
}

// take hands out an idle member that is ready, or nil. With session
// cgroups, ready means its processes were found in the container and
// moved into its cgroup: a launcher that has not got that far may yet
// hang (it opens .init.pid blocking, and a session can have put a FIFO
// there), and one whose processes never showed up is dropped.
func (pl *pool) take() *Process {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	for i := 0; i < len(pl.idle); i++ {
		p := pl.idle[i]
		ready, dead := memberState(p)
		switch {
		case dead:
			pl.idle = slices.Delete(pl.idle, i, i+1)
			i--
			go p.discard(context.Background())
		case ready:
			pl.idle = slices.Delete(pl.idle, i, i+1)
			return p
		}
	}
	return nil
}

// memberState tells whether a member can take a session now (see take),
// or must be dropped: its launcher ended, its gate opened without its
// processes, or some of them live in a container its launcher started
// itself (a session removed .init.pid just as it looked).
func memberState(p *Process) (ready, dead bool) {
	if isDone(p.done) {
		return false, true
	}
	if !isDone(p.Stdin.gate) {
		return false, false
	}
	held := p.procs.whole() && !p.procs.inOtherContainer()
	return held, !held
}

// memberScript is what a member's shell runs: the cgroup gate, then it
// waits for the request file's path and runs it with the same shell, so
// that the session script's waiting shell stays shellspawn's direct
// child. The request's script does the rest (home, PATH).
func memberScript(gate string) string {
	return gate + `IFS= read -r _r || exit 255; exec /bin/sh "$_r"`
}

// spawnMember starts a launcher that waits for its request.
func (l *Launcher) spawnMember(ctx context.Context) (*Process, error) {
	id, err := newSessionID()
	if err != nil {
		return nil, err
	}
	s := session{id: id, marker: "\x1edarling-sshd:" + id + "\x1e", env: l.Env(Request{}, id), member: true}
	if l.Cgroups != nil {
		s.gate = gateStep(false)
	}
	if l.Style == StyleFlag {
		s.args = append(s.args, "--prefix", l.Prefix)
	}
	s.args = append(s.args, "shell", "/bin/sh", "-c", memberScript(s.gate))
	return l.launch(ctx, s)
}

// shellName is what a pooled request can export: the name of a shell
// variable. Anything else goes through the launcher's environment, on a
// launcher of its own.
var shellName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// pooled reports whether req can be served by a pool member: an exec
// without a terminal whose environment the request file can carry.
func pooled(req Request) bool {
	if req.PTY != nil || req.Command == "" {
		return false
	}
	for _, kv := range req.Env {
		if k, _, _ := strings.Cut(kv, "="); !shellName.MatchString(k) || shellOwned(k) {
			return false
		}
	}
	return true
}

// shellOwned reports names a POSIX shell (bash as /bin/sh) keeps for
// itself: exporting one fails, so a request with one takes the launcher's
// environment instead.
func shellOwned(name string) bool {
	switch name {
	case "UID", "EUID", "PPID", "SHELLOPTS", "BASHOPTS", "GROUPS", "IFS", "PS4":
		return true
	}
	return strings.HasPrefix(name, "BASH")
}

// serve hands req to a pool member: writes its request file into the
// prefix, sends the member the file's path, and returns the member as the
// session's process. ok is false when no member could take it.
func (pl *pool) serve(ctx context.Context, s session) (*Process, bool) {
	p := pl.take()
	pl.wake()
	if p == nil {
		return nil, false
	}
	name, path, err := pl.l.writeRequest(p.procs.id, requestScript(s, p.Stdout.head.marker))
	if err != nil {
		pl.l.Log.Warn("cannot hand a session to a launcher started ahead; starting one for it", "err", err)
		go p.discard(context.Background())
		return nil, false
	}
	p.request = name
	// No tracker: take hands out only a member its cgroup holds whole
	// (memberState), and the cgroup follows all it starts.
	// The path goes to the member once its gate has opened (its
	// processes are in its cgroup), without Start waiting for that; the
	// client's bytes wait behind it.
	gate, ready := p.Stdin.gate, make(chan struct{})
	go func() {
		defer close(ready)
		if gate != nil {
			<-gate
		}
		if !p.ended.Load() {
			_, _ = p.Stdin.w.Write([]byte(path + "\n"))
		}
	}()
	p.Stdin.gate = ready
	return p, true
}

// requestScript is a request file: it sets the session's environment and
// runs the session script with the member's marker. The server removes
// it when the session ends (an rm in the script would cost an exec,
// which Darling's loader makes dear).
func requestScript(s session, marker []byte) string {
	var b strings.Builder
	env := s.req.Env
	if s.req.User != "" {
		env = append([]string{"USER=" + s.req.User, "LOGNAME=" + s.req.User}, env...)
	}
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		b.WriteString("export " + k + "=" + shQuote(v) + "; ")
	}
	b.WriteString(script(s.req.Command, string(marker), ""))
	return b.String()
}

// writeRequest writes a request file into the prefix through the
// container's view and returns its path as the prefix's processes see it.
// The folder is made by us and checked to be ours; nothing is followed
// through a link, and the file is new (O_EXCL).
func (l *Launcher) writeRequest(id, text string) (name, path string, err error) {
	dir, err := l.openRequestDir(true)
	if err != nil {
		return "", "", err
	}
	defer unix.Close(dir)
	name = "req-" + id
	fd, err := unix.Openat2(dir, name, &unix.OpenHow{
		Flags: unix.O_WRONLY | unix.O_CREAT | unix.O_EXCL | unix.O_CLOEXEC | unix.O_NOFOLLOW, Mode: 0o600, Resolve: beneath,
	})
	if err != nil {
		return "", "", fmt.Errorf("create the request file: %w", err)
	}
	defer unix.Close(fd)
	for b := []byte(text); len(b) > 0; {
		n, err := unix.Write(fd, b)
		if err != nil {
			l.removeRequests(name)
			return "", "", fmt.Errorf("write the request file: %w", err)
		}
		b = b[n:]
	}
	return name, "/" + requestDir + "/" + name, nil
}

// openRequestDir opens the request folder in the prefix through the
// container's view, creating it if asked, and checks that it is the
// server's own (a folder, not a link, owned by the server, 0700).
func (l *Launcher) openRequestDir(create bool) (int, error) {
	root, viaContainer, err := l.openView()
	if err != nil {
		return -1, err
	}
	defer unix.Close(root)
	if !viaContainer {
		return -1, errors.New("no container view of the prefix to write the request to")
	}
	if create {
		if err := unix.Mkdirat(root, requestDir, 0o700); err != nil && !errors.Is(err, unix.EEXIST) {
			return -1, fmt.Errorf("create %s in the prefix: %w", requestDir, err)
		}
	}
	dir, err := unix.Openat2(root, requestDir, &unix.OpenHow{Flags: unix.O_RDONLY | unix.O_DIRECTORY | unix.O_CLOEXEC, Resolve: beneath})
	if err != nil {
		return -1, fmt.Errorf("open %s in the prefix: %w", requestDir, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(dir, &st); err != nil || int(st.Uid) != unix.Geteuid() || st.Mode&0o077 != 0 {
		unix.Close(dir)
		return -1, fmt.Errorf("%s in the prefix is not the server's own folder (uid %d, mode %o): %v", requestDir, st.Uid, st.Mode&0o777, err)
	}
	return dir, nil
}

// removeRequests removes request files by name, or all of them (stale
// ones a server that stopped left) with none named. Errors are ignored:
// a file a session removed is gone either way.
func (l *Launcher) removeRequests(names ...string) {
	fd, err := l.openRequestDir(false)
	if err != nil {
		return
	}
	dir := os.NewFile(uintptr(fd), requestDir)
	defer dir.Close()
	if len(names) == 0 {
		all, _ := dir.Readdirnames(-1)
		for _, n := range all {
			if strings.HasPrefix(n, "req-") {
				names = append(names, n)
			}
		}
	}
	for _, n := range names {
		_ = unix.Unlinkat(int(dir.Fd()), n, 0)
	}
}
