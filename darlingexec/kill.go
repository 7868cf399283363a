package darlingexec

import (
	"bytes"
	"context"
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
func (l *Launcher) killSession(ctx context.Context, ps *sessionProcs, grace time.Duration) {
	l.tracker.remove(ps)
	ps.setProtect(l.containerPid())
	pids := ps.scan()
	if len(pids) == 0 {
		return
	}
	l.Log.Debug("ending session processes", "count", len(pids), "pids", pids)
	signalAll(pids, unix.SIGHUP)
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
			signalAll(ps.scan(), unix.SIGKILL)
			return
		case <-tick.C:
			pids = ps.alive()
		case <-full.C:
			pids = ps.scan()
		}
		if len(pids) == 0 {
			if pids = ps.scan(); len(pids) == 0 {
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
			signalAll(pids, unix.SIGKILL)
		}
	}
}

// fullScanEvery is how often the kill loop walks all of /proc.
const fullScanEvery = 250 * time.Millisecond

func signalAll(pids []int, sig unix.Signal) {
	for _, pid := range pids {
		_ = unix.Kill(pid, sig)
	}
}

// sessionProcs finds a session's processes: those whose environment holds
// the session marker (Darling forwards it and children inherit it), and
// their descendants, which may have cleared their environment (Nix starts
// builders with the derivation's environment only). Once seen, a process
// stays known by pid and start time, so it is still found after its
// parent died and it was reparented to the container's init; the tracker
// looks while the session runs, for processes that leave that way early.
type sessionProcs struct {
	marker []byte
	// since is the launcher's start time: a process started before it
	// cannot be the session's, so its environment is not read.
	since uint64

	mu      sync.Mutex
	protect int            // the container's init: never ours
	known   map[int]uint64 // pid -> start time: the session's
	checked map[int]uint64 // pid -> start time: environment read, not the session's
}

func newSessionProcs(marker []byte, since uint64, protect int) *sessionProcs {
	return &sessionProcs{marker: marker, since: since, protect: protect,
		known: map[int]uint64{}, checked: map[int]uint64{}}
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
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		if p, live := parseStat(b); err == nil && live && p.start == start {
			pids = append(pids, pid)
		} else {
			delete(s.known, pid)
		}
	}
	return pids
}

// scan returns the session's live processes.
func (s *sessionProcs) scan() []int { return s.update(liveProcs()) }

// update brings the session's processes up to date with all, the live
// processes, and returns them.
func (s *sessionProcs) update(all map[int]proc) []int {
	s.mu.Lock()
	defer s.mu.Unlock()
	self := os.Getpid()
	// Forget what died or whose pid was reused.
	for _, m := range []map[int]uint64{s.known, s.checked} {
		for pid, start := range m {
			if p, ok := all[pid]; !ok || p.start != start {
				delete(m, pid)
			}
		}
	}
	for pid, p := range all {
		if pid == self || pid == s.protect || p.start < s.since {
			continue
		}
		if _, ok := s.known[pid]; ok {
			continue
		}
		if _, ok := s.checked[pid]; ok {
			continue
		}
		env, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/environ")
		if err == nil && hasEntry(env, s.marker) {
			s.known[pid] = p.start
		} else {
			s.checked[pid] = p.start
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
				delete(s.checked, pid)
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
// ends. It runs only while there are sessions. The zero value is ready.
type tracker struct {
	mu       sync.Mutex
	sessions map[*sessionProcs]struct{}
	running  bool
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
		all := liveProcs()
		for _, ps := range list {
			ps.update(all)
		}
	}
}

// startTime returns pid's start time in clock ticks since boot, or 0.
func startTime(pid int) uint64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	p, _ := parseStat(b)
	return p.start
}

// proc is what scan needs of /proc/<pid>/stat.
type proc struct {
	ppid  int
	start uint64
}

// liveProcs reads every process's parent and start time from /proc,
// leaving out zombies, which have exited.
func liveProcs() map[int]proc {
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
		b, err := os.ReadFile("/proc/" + name + "/stat")
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
	f := bytes.Fields(b[i+2:])
	// f[0] state, f[1] ppid, ..., f[19] starttime (field 22 of the line).
	if len(f) < 20 || f[0][0] == 'Z' {
		return proc{}, false
	}
	ppid, err1 := strconv.Atoi(string(f[1]))
	start, err2 := strconv.ParseUint(string(f[19]), 10, 64)
	if err1 != nil || err2 != nil {
		return proc{}, false
	}
	return proc{ppid: ppid, start: start}, true
}

// hasEntry reports whether the NUL-separated environ holds entry exactly.
func hasEntry(environ, entry []byte) bool {
	for len(environ) > 0 {
		var e []byte
		if i := bytes.IndexByte(environ, 0); i >= 0 {
			e, environ = environ[:i], environ[i+1:]
		} else {
			e, environ = environ, nil
		}
		if bytes.Equal(e, entry) {
			return true
		}
	}
	return false
}
