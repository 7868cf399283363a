package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/darling-sshd/darling-sshd/sshserver"
)

// poolMembers returns the pids of the launchers s keeps started ahead of
// its exec sessions, waiting for their request.
func (s *server) poolMembers() []int {
	return procsMatching(func(cl string) bool {
		return strings.HasPrefix(cl, bins.standin+"\x00") && waitsForRequest(cl) && strings.Contains(cl, "\x00shell\x00")
	})
}

// waitsForRequest reports whether a process's command line is a pool
// member's (its launcher, or its shell in the container): it waits for
// its request.
func waitsForRequest(cmdline string) bool {
	return strings.Contains(cmdline, "IFS= read -r _r || exit 255; exec /bin/sh")
}

// TestPrespawn: exec sessions are handed to launchers started ahead
// (--prespawn 2), with their environment, stdin, stdout,
// stderr and exit status as any session's; a used launcher is replaced;
// idle ones are not sessions; ones whose container went away are dropped
// and the pool refills after the next warm-up; none outlives the server.
func TestPrespawn(t *testing.T) {
	s := startServer(t, serverOpt{args: []string{"--prespawn", "2"}})
	// A member counts once its launcher runs and its container side waits.
	if !waitFor(time.Minute, func() bool { return len(s.poolMembers()) == 2 }) {
		t.Fatalf("the pool never filled: %v\n%s", s.poolMembers(), s.log.String())
	}
	before := s.poolMembers()
	r := s.exec("echo out $USER $LANG; echo err >&2; cat; exit 7", "stdin bytes\x00\xff")
	if r.stdout != "out root\nstdin bytes\x00\xff" || r.stderr != "err\n" || r.code != 7 {
		t.Errorf("pooled session: %+v", r)
	}
	if pid := startedPid(s, "echo out"); !slices.Contains(before, pid) {
		t.Errorf("the session ran on launcher %d, not on one started ahead (%v):\n%s", pid, before, s.log.String())
	}
	if !waitFor(time.Minute, func() bool {
		now := s.poolMembers()
		return len(now) == 2 && !slices.Equal(now, before)
	}) {
		t.Errorf("the used launcher was not replaced: %v, before %v", s.poolMembers(), before)
	}
	// The environment a client sets reaches a pooled command.
	ctxOut, err := s.ssh(t.Context(), "-o", `SetEnv=LANG=C.UTF-8 "LC_TIME=it's $quoted; too"`, "dut", `printf '%s|%s' "$LANG" "$LC_TIME"`).Output()
	if err != nil || string(ctxOut) != `C.UTF-8|it's $quoted; too` {
		t.Errorf("environment through the pool: %q %v", ctxOut, err)
	}
	// Idle launchers are not sessions. (The client may be gone a moment
	// before the server has closed the session's books.)
	var raw string
	if !waitFor(30*time.Second, func() bool {
		raw, err = s.status("--json")
		var st sshserver.Status
		return err == nil && json.Unmarshal([]byte(raw), &st) == nil && len(st.Sessions) == 0 && st.Pool.Size == 2
	}) {
		t.Errorf("status with only idle launchers: %v\n%s", err, raw)
	}
	// No request file is left behind.
	var left []os.DirEntry
	if !waitFor(30*time.Second, func() bool {
		left, err = os.ReadDir(prefixView(t, s.prefix, ".darling-sshd-requests"))
		return err == nil && len(left) == 0
	}) {
		t.Errorf("request files left: %v %v", left, err)
	}

	// The container goes away: its idle launchers end and are dropped;
	// the next session warms the prefix and the pool refills.
	shutdownStandin(s.prefix)
	if !waitFor(time.Minute, func() bool { return len(s.poolMembers()) == 0 }) {
		t.Errorf("launchers of a stopped container still kept: %v", s.poolMembers())
	}
	if r := s.exec("echo again", ""); r.stdout != "again\n" || r.code != 0 {
		t.Errorf("session after the container went away: %+v", r)
	}
	if !waitFor(time.Minute, func() bool { return len(s.poolMembers()) == 2 }) {
		t.Errorf("the pool did not refill after the warm-up: %v", s.poolMembers())
	}
	members := s.poolMembers()
	s.stop()
	for _, pid := range members {
		if alive(pid) {
			t.Errorf("launcher %d started ahead outlived the server", pid)
		}
	}
}

// TestPrespawnOff: --prespawn 0 starts no launcher ahead, and sessions
// work as before.
func TestPrespawnOff(t *testing.T) {
	s := startServer(t, serverOpt{args: []string{"--prespawn", "0"}})
	if r := s.exec("echo plain; exit 3", ""); r.stdout != "plain\n" || r.code != 3 {
		t.Errorf("session: %+v", r)
	}
	if m := s.poolMembers(); len(m) != 0 {
		t.Errorf("launchers started ahead with --prespawn 0: %v", m)
	}
}

// TestPrespawnNeedsCgroups: without session cgroups nothing tells a
// launcher started ahead that hangs from one that waits, so the pool is
// off, the log says why, and sessions start their own launchers.
func TestPrespawnNeedsCgroups(t *testing.T) {
	s := startServer(t, serverOpt{args: []string{"--session-cgroups", "off"}})
	if !strings.Contains(s.log.String(), "needs session cgroups") {
		t.Errorf("no word in the log of the pool being off:\n%s", s.log.String())
	}
	if r := s.exec("echo own; exit 4", ""); r.stdout != "own\n" || r.code != 4 {
		t.Errorf("session: %+v", r)
	}
	if m := s.poolMembers(); len(m) != 0 {
		t.Errorf("launchers started ahead without session cgroups: %v", m)
	}
}

// startedPid is the launcher pid the log's "exec started" line gives for
// the command that starts with command.
func startedPid(s *server, command string) int {
	for _, l := range strings.Split(s.log.String(), "\n") {
		if !strings.Contains(l, `msg="exec started"`) || !strings.Contains(l, `command="`+command) {
			continue
		}
		for _, f := range strings.Fields(l) {
			if v, ok := strings.CutPrefix(f, "pid="); ok {
				pid, _ := strconv.Atoi(v)
				return pid
			}
		}
	}
	return 0
}

// slowLauncher returns a launcher that takes a second longer to start
// while the file slowFlag exists (created by the test), then runs the
// stand-in.
func slowLauncher(t *testing.T) (launcher, slowFlag string) {
	slowFlag = filepath.Join(t.TempDir(), "slow")
	return launcherScript(t, "[ -e "+slowFlag+" ] && sleep 1\nexec \"$STANDIN\" \"$@\""), slowFlag
}

// TestPrespawnSecondContainer: a session removes .init.pid just as a
// launcher started ahead looks for the container (a launcher made slow
// while a flag file exists makes that certain). Like Darling's, that
// launcher cold-starts a container of its own, which would hold its
// session's stdout for good. The server must not hand it a session: it
// ends it with all it started, starts another in the prefix's container,
// and the next session runs there.
func TestPrespawnSecondContainer(t *testing.T) {
	launcher, slowFlag := slowLauncher(t)
	s := startServer(t, serverOpt{args: []string{"--darling", launcher, "--prespawn", "1"}})
	first := containerPidOf(s.prefix)
	if err := os.WriteFile(slowFlag, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	// Taking the one member starts its replacement, which sleeps a
	// second before it reads .init.pid; the session removes it meanwhile.
	if r := s.exec("rm -f /.init.pid; echo removed", ""); r.stdout != "removed\n" || r.code != 0 {
		t.Fatalf("remove .init.pid: %+v", r)
	}
	if !waitFor(time.Minute, func() bool { return strings.Contains(s.log.String(), "started a container of its own") }) {
		t.Fatalf("the launcher that started a second container was not noticed:\n%s", s.log.String())
	}
	os.Remove(slowFlag)
	s.awaitPool()
	before := s.poolMembers()
	if r := s.exec("echo second", ""); r.stdout != "second\n" || r.code != 0 {
		t.Fatalf("session after a launcher started a second container: %+v\n%s", r, s.log.String())
	}
	if pid := startedPid(s, "echo second"); !slices.Contains(before, pid) {
		t.Errorf("the session ran on launcher %d, not on one started ahead (%v)", pid, before)
	}
	if got := containerPidOf(s.prefix); got != first {
		t.Errorf(".init.pid names %d, want the prefix's container %d", got, first)
	}
	others := procsMatching(func(cl string) bool {
		return strings.HasPrefix(cl, "darlingserver\x00"+s.prefix+"\x00")
	})
	if len(others) != 1 || others[0] != first {
		t.Errorf("darlingserver processes of the prefix: %v, want only %d", others, first)
	}
}

// TestSecondContainerSession: the same race for a session's own launcher
// (--prespawn 0): a session removes .init.pid while another session's
// launcher, slowed by a flag file, has yet to read it. That launcher
// cold-starts a container of its own, which would hold its session's
// output for good; the server ends that session before its command runs,
// with all it started, and the next session runs in the prefix's
// container.
func TestSecondContainerSession(t *testing.T) {
	launcher, slowFlag := slowLauncher(t)
	s := startServer(t, serverOpt{args: []string{"--darling", launcher, "--prespawn", "0"}})
	first := containerPidOf(s.prefix)
	if err := os.WriteFile(slowFlag, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// The second session's launcher sleeps a second before it reads
	// .init.pid; the first session removes it within that second.
	victim := s.ssh(ctx, "dut", "echo never")
	var out, errOut bytes.Buffer
	victim.Stdout, victim.Stderr = &out, &errOut
	if err := victim.Start(); err != nil {
		t.Fatal(err)
	}
	if !waitFor(30*time.Second, func() bool { return startedPid(s, "echo never") != 0 }) {
		t.Fatalf("the second session never started:\n%s", s.log.String())
	}
	os.Remove(slowFlag)
	if r := s.exec("rm -f /.init.pid; echo removed", ""); r.stdout != "removed\n" || r.code != 0 {
		t.Fatalf("remove .init.pid: %+v", r)
	}
	// It fails with a word why, rather than hang or pass for a success.
	err := victim.Wait()
	if code := victim.ProcessState.ExitCode(); code != 255 || out.Len() != 0 || !strings.Contains(errOut.String(), "second container") {
		t.Errorf("the session whose launcher started a second container: %v (status %d), stdout %q, stderr %q", err, code, out.String(), errOut.String())
	}
	if !strings.Contains(s.log.String(), "started a container of its own") {
		t.Errorf("the second container was not noticed:\n%s", s.log.String())
	}
	if r := s.exec("echo next", ""); r.stdout != "next\n" || r.code != 0 {
		t.Fatalf("session after a launcher started a second container: %+v\n%s", r, s.log.String())
	}
	if got := containerPidOf(s.prefix); got != first {
		t.Errorf(".init.pid names %d, want the prefix's container %d", got, first)
	}
	if !waitFor(30*time.Second, func() bool {
		others := procsMatching(func(cl string) bool { return strings.HasPrefix(cl, "darlingserver\x00"+s.prefix+"\x00") })
		return len(others) == 1 && others[0] == first
	}) {
		t.Errorf("a second container of the prefix outlived its session")
	}
}
