package darlingexec

import (
	"bytes"
	"context"
	"errors"
	"os"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// pollEvery is how often the kill loop looks for survivors.
const pollEvery = 20 * time.Millisecond

// afterKill bounds how long the kill loop waits for SIGKILLed processes.
const afterKill = 10 * time.Second

// killSession signals the session's processes: SIGHUP, then SIGKILL after
// grace, until none is left (or afterKill has passed since the SIGKILL).
// With a cgroup, its processes are the session's too, whatever their
// environment and parentage, and cgroup.kill ends them all at once.
func (l *Launcher) killSession(ctx context.Context, ps *sessionProcs, grace time.Duration) {
	l.tracker.remove(ps)
	ps.setProtect(l.containerPid())
	pids := ps.withCgroup(l.tracker.scan(ps))
	if ps.gone(pids) {
		return
	}
	l.Log.Debug("ending session processes", "count", len(pids), "pids", pids)
	ps.signal(pids, unix.SIGHUP)
	if ps.whole() {
		l.endCgroup(ctx, ps, grace)
		return
	}
	hupDeadline := time.Now().Add(grace)
	var killDeadline time.Time
	// Known processes are checked often, cheaply; the whole of /proc (for
	// children started meanwhile) less often: many sessions may be ending
	// at once, each walking /proc.
	tick := time.NewTicker(pollEvery)
	defer tick.Stop()
	full := time.NewTicker(fullScanEvery)
	defer full.Stop()
	for {
		select {
		case <-ctx.Done():
			ps.kill(ps.withCgroup(l.tracker.scan(ps)))
			return
		case <-tick.C:
			pids = ps.withCgroup(ps.alive())
		case <-full.C:
			pids = ps.withCgroup(l.tracker.scan(ps))
		}
		if ps.gone(pids) {
			if pids = ps.withCgroup(l.tracker.scan(ps)); ps.gone(pids) {
				return
			}
		}
		now := time.Now()
		if now.After(hupDeadline) {
			if killDeadline.IsZero() {
				l.Log.Debug("session processes survived SIGHUP; SIGKILL", "pids", pids)
				killDeadline = now.Add(afterKill)
			} else if now.After(killDeadline) {
				l.Log.Warn("session processes survive SIGKILL", "pids", pids)
				return
			}
			ps.kill(pids)
		}
	}
}

// endCgroup ends a session whose processes are all in its cgroup but
// the launcher (ours, which exits with its command): it waits for the
// cgroup to empty, SIGKILLs it whole after grace, and waits again.
func (l *Launcher) endCgroup(ctx context.Context, ps *sessionProcs, grace time.Duration) {
	wait := grace
	for round := range 2 {
		if ps.cg.waitEmpty(ctx, wait) && ps.outsideGone(ctx, wait) {
			return
		}
		if ctx.Err() != nil || round == 1 {
			break
		}
		l.Log.Debug("session processes survived SIGHUP; SIGKILL", "cgroup", ps.cg.dir)
		ps.kill(ps.withCgroup(ps.alive()))
		wait = afterKill
	}
	ps.kill(ps.withCgroup(ps.alive()))
	if ctx.Err() == nil {
		l.Log.Warn("session processes survive SIGKILL", "cgroup", ps.cg.dir, "pids", ps.alive())
	}
}

// outsideGone waits, for at most d, until the session's known processes
// outside its cgroup (its launcher) are gone.
func (s *sessionProcs) outsideGone(ctx context.Context, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for len(s.alive()) > 0 {
		if ctx.Err() != nil || time.Now().After(deadline) {
			return false
		}
		time.Sleep(pollEvery)
	}
	return true
}

// whole reports whether the session's processes are in a cgroup that
// holds only them: then the cgroup, not /proc, says when they are gone.
func (s *sessionProcs) whole() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cg != nil && s.held && !s.foreign
}

// setHeld records that the session's processes were moved into its
// cgroup; until then (and if they never were) the tracker keeps looking.
func (s *sessionProcs) setHeld() {
	s.mu.Lock()
	s.held = true
	s.mu.Unlock()
}

// kill SIGKILLs pids and, at once, all of the session's cgroup, unless
// a process from outside the container was found in it.
func (s *sessionProcs) kill(pids []int) {
	if s.whole() {
		_ = s.cg.kill()
	}
	s.signal(pids, unix.SIGKILL)
}

// gone reports whether none of pids is left, nor any process in the
// session's cgroup.
func (s *sessionProcs) gone(pids []int) bool {
	s.mu.Lock()
	foreign := s.foreign // then the cgroup stays populated
	s.mu.Unlock()
	return len(pids) == 0 && (s.cg == nil || foreign || !s.cg.populated())
}

// withCgroup adds the processes in the session's cgroup to pids, and to
// the processes the session knows, by their start time.
func (s *sessionProcs) withCgroup(pids []int) []int {
	if s.cg == nil {
		return pids
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, pid := range s.cg.procs() {
		if _, ok := s.known[pid]; ok || pid == s.protect {
			continue
		}
		if !inNestedPIDNamespace(pid) {
			// Only a session's own processes are moved in, and they all
			// run in the container's PID namespace; a host process can
			// only have been put there behind the server's back.
			s.foreign = true
			continue
		}
		if st := startTime(pid); st != 0 {
			s.known[pid] = st
			pids = append(pids, pid)
		}
	}
	return pids
}

// inNestedPIDNamespace reports whether pid lives in a PID namespace below
// ours, as the container's processes do: its NSpid line has more pids
// than ours.
func inNestedPIDNamespace(pid int) bool {
	theirs, err1 := pidNamespaceDepth(strconv.Itoa(pid))
	ours, err2 := pidNamespaceDepth("self")
	return err1 == nil && err2 == nil && theirs > ours
}

// startOf returns the start time the session knows pid by, or 0.
func (s *sessionProcs) startOf(pid int) uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.known[pid]
}

// fullScanEvery is how often the kill loop walks all of /proc.
const fullScanEvery = 250 * time.Millisecond

// signal sends sig to each of pids the session knows, as the process it
// knows: by the start time it recorded (see signalProc). A pid it no longer
// knows (the process died and was forgotten since the scan) is skipped.
func (s *sessionProcs) signal(pids []int, sig unix.Signal) {
	starts := make([]uint64, len(pids))
	s.mu.Lock()
	for i, pid := range pids {
		starts[i] = s.known[pid]
	}
	s.mu.Unlock()
	for i, pid := range pids {
		if starts[i] != 0 {
			_ = signalProc(pid, starts[i], sig)
		}
	}
}

// errNotOurs is signalProc's answer for a pid that now names another
// process than the one it was asked to signal, or none.
var errNotOurs = errors.New("not the process it was: it exited, and its pid may have been reused")

// signalProc sends sig to pid only if pid is still the process that
// started at start. Between the /proc walk that found a session's process
// and the signal, that process may exit and its pid go to another process
// (any of the host's: the server runs as root), which kill(2) would hit.
// So the signal goes through a pidfd, bound to the process that had the
// pid when it was opened, whatever happens to the pid later. A start time
// read after the pidfd was opened matches start only if that process is
// the one we know (were it gone, /proc would show the pid's next owner, or
// nothing). Without pidfds (Linux before 5.3) it checks the start time and
// uses kill(2), which leaves a short window between the two.
func signalProc(pid int, start uint64, sig unix.Signal) error {
	fd, err := unix.PidfdOpen(pid, 0)
	if errors.Is(err, unix.ENOSYS) {
		return killChecked(pid, start, sig)
	}
	if err != nil {
		return err // ESRCH: gone
	}
	defer unix.Close(fd)
	if !startedAt(pid, start) {
		return errNotOurs
	}
	return unix.PidfdSendSignal(fd, sig, nil, 0)
}

// killChecked is signalProc without pidfds: kill(2) after the same check.
func killChecked(pid int, start uint64, sig unix.Signal) error {
	if !startedAt(pid, start) {
		return errNotOurs
	}
	return unix.Kill(pid, sig)
}

// startedAt reports whether pid names a live process that started at
// start. startTime is 0 for a process gone or a zombie: never a match.
func startedAt(pid int, start uint64) bool {
	st := startTime(pid)
	return st != 0 && st == start
}

// sessionProcs finds a session's processes: those whose environment holds
// the session marker (Darling forwards it and children inherit it), and
// their descendants, which may have cleared their environment (Nix starts
// builders with the derivation's environment only). Once seen, a process
// stays known by pid and start time, so it is still found after its
// parent died and it was reparented to the container's init; the tracker
// looks while the session runs, for processes that leave that way early.
type sessionProcs struct {
	id string // the marker's value
	// since is the launcher's start time: a process started before it
	// cannot be the session's.
	since uint64

	// cg is the session's cgroup, or nil; set before the session's
	// command runs, then only read.
	cg *sessionCgroup

	mu      sync.Mutex
	foreign bool // a process of our PID namespace was in the cgroup
	// elsewhere: a process of the session lives in another container
	// than the prefix's (see moveMarked).
	elsewhere bool
	held      bool           // the session's processes were moved into cg
	protect   int            // the container's init: never ours
	known     map[int]uint64 // pid -> start time: the session's
}

func newSessionProcs(id string, since uint64, protect int) *sessionProcs {
	return &sessionProcs{id: id, since: since, protect: protect, known: map[int]uint64{}}
}

// container returns the pid of the prefix's container the session was
// started against (darlingserver), or 0.
func (s *sessionProcs) container() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.protect
}

// setElsewhere records that a process of the session was found in
// another container than the prefix's.
func (s *sessionProcs) setElsewhere() {
	s.mu.Lock()
	s.elsewhere = true
	s.mu.Unlock()
}

// inOtherContainer reports whether setElsewhere was called.
func (s *sessionProcs) inOtherContainer() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.elsewhere
}

func (s *sessionProcs) setProtect(pid int) {
	s.mu.Lock()
	s.protect = pid
	s.mu.Unlock()
}

// alive returns the known processes still alive, reading only theirs.
func (s *sessionProcs) alive() []int {
	s.mu.Lock()
	defer s.mu.Unlock()
	pids := make([]int, 0, len(s.known))
	for pid, start := range s.known {
		if p, live := statOf(pid); live && p.start == start {
			pids = append(pids, pid)
		} else {
			delete(s.known, pid)
		}
	}
	return pids
}

// update brings the session's processes up to date with all, the live
// processes, and seen, the session each names in its environment, and
// returns them.
func (s *sessionProcs) update(all map[int]proc, seen map[int]seenProc) []int {
	s.mu.Lock()
	defer s.mu.Unlock()
	self := os.Getpid()
	// Forget what died or whose pid was reused.
	for pid, start := range s.known {
		if p, ok := all[pid]; !ok || p.start != start {
			delete(s.known, pid)
		}
	}
	for pid, p := range all {
		if pid == self || pid == s.protect || p.start < s.since {
			continue
		}
		if seen[pid].session == s.id {
			s.known[pid] = p.start
		}
	}
	// Add descendants until nothing changes.
	for grew := true; grew; {
		grew = false
		for pid, p := range all {
			if _, ok := s.known[pid]; ok || pid == self || pid == s.protect {
				continue
			}
			if _, ok := s.known[p.ppid]; ok {
				s.known[pid] = p.start
				grew = true
			}
		}
	}
	pids := make([]int, 0, len(s.known))
	for pid := range s.known {
		pids = append(pids, pid)
	}
	return pids
}

// trackEvery is how often the tracker looks at running sessions.
const trackEvery = 500 * time.Millisecond

// tracker follows the processes of running sessions in the background,
// one /proc walk for all of them, so that a process that leaves a
// session's tree and clears its environment is known when the session
// ends. It runs only while there are such sessions: one whose cgroup
// holds all its processes leaves it (see enterCgroup). It reads each
// process's environment once in the process's life, whatever the number
// of sessions. The zero value is ready.
type tracker struct {
	mu       sync.Mutex
	sessions map[*sessionProcs]struct{}
	running  bool

	seenMu sync.Mutex
	seen   map[int]seenProc // every live process whose environment was read
	rd     procReader
}

// seenProc is a process whose environment was read: its start time, and
// the session its environment names ("" for none).
type seenProc struct {
	start, env uint64 // proc's: the same process, and the same exec
	session    string
}

func (t *tracker) add(ps *sessionProcs) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.sessions == nil {
		t.sessions = map[*sessionProcs]struct{}{}
	}
	t.sessions[ps] = struct{}{}
	if !t.running {
		t.running = true
		go t.loop()
	}
}

func (t *tracker) remove(ps *sessionProcs) {
	t.mu.Lock()
	delete(t.sessions, ps)
	t.mu.Unlock()
}

func (t *tracker) loop() {
	tick := time.NewTicker(trackEvery)
	defer tick.Stop()
	for range tick.C {
		t.mu.Lock()
		if len(t.sessions) == 0 {
			t.running = false
			t.mu.Unlock()
			return
		}
		list := make([]*sessionProcs, 0, len(t.sessions))
		for ps := range t.sessions {
			list = append(list, ps)
		}
		t.mu.Unlock()
		t.look(func(all map[int]proc, seen map[int]seenProc) {
			for _, ps := range list {
				ps.update(all, seen)
			}
		})
	}
}

// scan returns the session's live processes.
func (t *tracker) scan(ps *sessionProcs) (pids []int) {
	t.look(func(all map[int]proc, seen map[int]seenProc) { pids = ps.update(all, seen) })
	return pids
}

// look walks /proc and calls fn with the live processes and the session
// each names in its environment, reading only the environments of
// processes it has not seen before.
func (t *tracker) look(fn func(all map[int]proc, seen map[int]seenProc)) {
	t.seenMu.Lock()
	defer t.seenMu.Unlock()
	all := t.rd.liveProcs()
	if t.seen == nil {
		t.seen = map[int]seenProc{}
	}
	for pid, sp := range t.seen {
		if p, ok := all[pid]; !ok || p.start != sp.start || p.env != sp.env {
			delete(t.seen, pid)
		}
	}
	self := os.Getpid()
	for pid, p := range all {
		if _, ok := t.seen[pid]; ok || pid == self {
			continue
		}
		// Read again after an exec: what was read between fork and
		// exec was the parent's environment.
		sp := seenProc{start: p.start, env: p.env}
		if env, err := t.rd.readMax("/proc/"+strconv.Itoa(pid)+"/environ", maxEnviron); err == nil {
			sp.session = sessionOf(env)
		}
		t.seen[pid] = sp
	}
	fn(all, t.seen)
}

// startTime returns pid's start time in clock ticks since boot, or 0.
func startTime(pid int) uint64 {
	p, _ := statOf(pid)
	return p.start
}

// statOf reads pid's parent and start time from its /proc stat; false if
// it is gone, a zombie, or its stat cannot be read.
func statOf(pid int) (proc, bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return proc{}, false
	}
	return parseStat(b)
}

// proc is what scan needs of /proc/<pid>/stat.
type proc struct {
	ppid  int
	start uint64
	// env is the address of the process's environment: new with each
	// exec, as the process gets a new memory map. A process read
	// between fork and exec shows its parent's environment, or none.
	env uint64
}

// procReader reads /proc files into one buffer it reuses: the tracker
// reads every process's stat twice a second.
type procReader struct{ buf []byte }

// read returns the file's contents, valid until the next read.
func (r *procReader) read(path string) ([]byte, error) { return r.readMax(path, 1<<30) }

// maxEnviron bounds how much of a process's environment the tracker
// reads: a session's process may hold megabytes there, and the tracker
// reads every new process's. The marker comes early in what the launcher
// is given (see Env), and a client's variables are bounded well below.
const maxEnviron = 1 << 20

// readMax is read for at most max bytes.
func (r *procReader) readMax(path string, max int) ([]byte, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	if r.buf == nil {
		r.buf = make([]byte, 0, 4096)
	}
	b := r.buf[:0]
	for {
		if len(b) == cap(b) {
			b = append(b, 0)[:len(b)]
		}
		if len(b) >= max {
			r.buf = b
			return b[:max], nil
		}
		n, err := unix.Read(fd, b[len(b):min(cap(b), max)])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			r.buf = b
			return nil, err
		}
		if n == 0 {
			r.buf = b
			return b, nil
		}
		b = b[:len(b)+n]
	}
}

// liveProcs reads every process's parent and start time from /proc,
// leaving out zombies, which have exited.
func (r *procReader) liveProcs() map[int]proc {
	d, err := os.Open("/proc")
	if err != nil {
		return nil
	}
	defer d.Close()
	names, err := d.Readdirnames(-1)
	if err != nil {
		return nil
	}
	all := make(map[int]proc, len(names))
	for _, name := range names {
		pid, err := strconv.Atoi(name)
		if err != nil {
			continue
		}
		b, err := r.read("/proc/" + name + "/stat")
		if err != nil {
			continue
		}
		if p, ok := parseStat(b); ok {
			all[pid] = p
		}
	}
	return all
}

// parseStat reads ppid and start time from /proc/<pid>/stat, and reports
// false for a zombie or a line it cannot read. The command name, in
// parentheses, may hold spaces and parentheses: fields are counted from
// the last ')'.
func parseStat(b []byte) (proc, bool) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) {
		return proc{}, false
	}
	// Field 0 is the state, 1 the ppid, 19 the start time (field 22 of
	// the line), 47 where the environment starts (field 50).
	var state, ppid, start, envStart []byte
	rest := b[i+2:]
	for k := 0; k <= 47 && len(rest) > 0; k++ {
		j := bytes.IndexByte(rest, ' ')
		if j < 0 {
			j = len(rest)
		}
		f := bytes.TrimSpace(rest[:j])
		switch k {
		case 0:
			state = f
		case 1:
			ppid = f
		case 19:
			start = f
		case 47:
			envStart = f
		}
		rest = rest[min(j+1, len(rest)):]
	}
	if len(state) == 0 || len(start) == 0 || state[0] == 'Z' {
		return proc{}, false
	}
	pp, err1 := strconv.Atoi(string(ppid))
	st, err2 := strconv.ParseUint(string(start), 10, 64)
	if err1 != nil || err2 != nil {
		return proc{}, false
	}
	env, _ := strconv.ParseUint(string(envStart), 10, 64) // 0 if hidden or absent
	return proc{ppid: pp, start: st, env: env}, true
}

// sessionOf returns the session marker's value in a NUL-separated
// environ, or "".
func sessionOf(environ []byte) string {
	prefix := []byte(SessionVar + "=")
	for len(environ) > 0 {
		e := environ
		if i := bytes.IndexByte(environ, 0); i >= 0 {
			e, environ = environ[:i], environ[i+1:]
		} else {
			environ = nil
		}
		if v, ok := bytes.CutPrefix(e, prefix); ok {
			return string(v)
		}
	}
	return ""
}
