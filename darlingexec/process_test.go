package darlingexec

import (
	"context"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// detachingLauncher writes a launcher that, like Darling, runs the command
// outside its own process tree (setsid, reparented) and stays until it ends.
func detachingLauncher(t *testing.T) *Launcher {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "launcher")
	script := `#!/bin/sh
[ "$1" = --prefix ] && shift 2
shift
setsid -f "$@"
exec sleep 1000
`
	if err := os.WriteFile(path, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	prefix := filepath.Join(dir, "p")
	fakeContainer(t, prefix)
	return &Launcher{
		Path: path, Prefix: prefix, Style: StyleFlag, LogPath: filepath.Join(dir, "launcher.log"),
		KillGrace: time.Second, WarmTimeout: 10 * time.Second,
		Log:     slog.New(slog.NewTextHandler(io.Discard, nil)),
		HostEnv: []string{"HOME=" + dir, "PATH=" + os.Getenv("PATH")},
	}
}

func sleepers(arg string) []int {
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err != nil || string(b) != "sleep\x00"+arg+"\x00" {
			continue
		}
		pid, _ := strconv.Atoi(e.Name())
		if processAlive(pid) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// TestEndFindsDetachedProcesses: End reaches a process the launcher did
// not start as its descendant, through the session marker.
func TestEndFindsDetachedProcesses(t *testing.T) {
	l := detachingLauncher(t)
	arg := strconv.Itoa(int(time.Now().UnixNano()%900000) + 100000)
	p, err := l.Start(context.Background(), Request{Command: "trap '' HUP; sleep " + arg})
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(sleepers(arg)) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("detached command never started")
		}
		time.Sleep(10 * time.Millisecond)
	}
	p.End(context.Background())
	if left := sleepers(arg); len(left) != 0 {
		t.Errorf("End returned with session processes left: %v", left)
	}
	st, _ := p.Wait()
	if !st.Ended || st.Signal == "" {
		t.Errorf("launcher status %+v: want ended by a signal the server sent", st)
	}
	if len(p.procs.id) != 24 {
		t.Errorf("session id %q", p.procs.id)
	}
}

// TestEndFindsDescendantsWithoutMarker: a child that cleared its
// environment (as Nix's builders do) is still ended, through its parent.
func TestEndFindsDescendantsWithoutMarker(t *testing.T) {
	l := detachingLauncher(t)
	arg := strconv.Itoa(int(time.Now().UnixNano()%900000) + 100000)
	p, err := l.Start(context.Background(), Request{Command: "env -i /bin/sh -c 'trap \"\" HUP; sleep " + arg + "' & wait"})
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(sleepers(arg)) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("command never started")
		}
		time.Sleep(10 * time.Millisecond)
	}
	p.End(context.Background())
	if left := sleepers(arg); len(left) != 0 {
		t.Errorf("a descendant without the marker survived End: %v", left)
	}
}

func TestParseStat(t *testing.T) {
	line := "123 (a (weird) name) S 45 123 123 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 98765 1000 100 18446744073709551615\n"
	p, ok := parseStat([]byte(line))
	if !ok || p.ppid != 45 || p.start != 98765 {
		t.Errorf("parseStat: %+v %v", p, ok)
	}
	if _, ok := parseStat([]byte(strings.Replace(line, ") S ", ") Z ", 1))); ok {
		t.Error("zombie parsed as live")
	}
	if _, ok := parseStat([]byte("garbage")); ok {
		t.Error("garbage parsed")
	}
}

// TestEndFindsEarlyOrphans: a process that cleared its environment and
// was orphaned long before the session ended is still ended: the tracker
// saw it while its parent lived.
func TestEndFindsEarlyOrphans(t *testing.T) {
	l := detachingLauncher(t)
	arg := strconv.Itoa(int(time.Now().UnixNano()%900000) + 100000)
	parentArg := strconv.Itoa(int(time.Now().UnixNano()%900000) + 1000000)
	p, err := l.Start(context.Background(), Request{Command: "(env -i /bin/sh -c 'trap \"\" HUP; exec sleep " + arg + "' & exec sleep " + parentArg + "); sleep 1000"})
	if err != nil {
		t.Fatal(err)
	}
	known := func() bool {
		p.procs.mu.Lock()
		defer p.procs.mu.Unlock()
		for _, pid := range sleepers(arg) {
			if _, ok := p.procs.known[pid]; ok {
				return true
			}
		}
		return false
	}
	deadline := time.Now().Add(10 * time.Second)
	for !known() {
		if time.Now().After(deadline) {
			t.Fatal("the tracker never saw the command's child")
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Orphan it: its parent dies, and it is reparented out of the tree.
	for _, pid := range sleepers(parentArg) {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	for len(sleepers(parentArg)) != 0 {
		time.Sleep(10 * time.Millisecond)
	}
	p.End(context.Background())
	if left := sleepers(arg); len(left) != 0 {
		t.Errorf("an early orphan without the marker survived End: %v", left)
	}
}

// TestPTYStartsWithLatestSize: the terminal is created with the latest
// size the client sent, not the pty-req's: Darling's launcher reads the
// size once as it starts, before it listens for changes.
func TestPTYStartsWithLatestSize(t *testing.T) {
	l := detachingLauncher(t)
	// This launcher reads its terminal's size at once, as Darling's does.
	script := "#!/bin/sh\nstty size\n"
	if err := os.WriteFile(l.Path, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	p, err := l.Start(context.Background(), Request{Command: "true", PTY: &PTY{
		Cols: 80, Rows: 24,
		Latest: func() (uint16, uint16, bool) { return 132, 43, true },
	}})
	if err != nil {
		t.Fatal(err)
	}
	out, _ := io.ReadAll(p.Stdout)
	p.Wait()
	p.Sweep(context.Background())
	if got := strings.TrimSpace(string(out)); got != "43 132" {
		t.Errorf("the launcher's terminal started at %q, want 43 132", got)
	}
}

// TestExitsWithin: a process that runs past d is not gone; one that exits
// within d is seen to go as it exits, before d; a zombie, not yet reaped,
// is gone, as is a pid whose start does not match.
func TestExitsWithin(t *testing.T) {
	ctx := context.Background()
	run := func(script string) *exec.Cmd {
		c := exec.Command("sh", "-c", script)
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Process.Kill(); c.Wait() })
		return c
	}
	c := run("exec sleep 60")
	pid := c.Process.Pid
	st := startTime(pid)
	if exitsWithin(ctx, pid, st, 50*time.Millisecond) {
		t.Error("a running process counted as gone")
	}
	if !exitsWithin(ctx, pid, st+1, time.Minute) {
		t.Error("a pid whose start does not match counted as the process")
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if exitsWithin(cctx, pid, st, time.Minute) {
		t.Error("a running process counted as gone after ctx ended")
	}
	// Killed and not reaped: a zombie.
	c.Process.Signal(syscall.SIGKILL)
	if !exitsWithin(ctx, pid, st, time.Minute) {
		t.Error("a killed process not seen to go")
	}

	// Exits while watched: exitsWithin returns as it exits, long before d.
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	c2 := exec.Command("sh", "-c", "read x")
	c2.Stdin = r
	if err := c2.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c2.Process.Kill(); c2.Wait() })
	st2 := startTime(c2.Process.Pid)
	go func() {
		time.Sleep(100 * time.Millisecond)
		w.Close()
	}()
	start := time.Now()
	if !exitsWithin(ctx, c2.Process.Pid, st2, time.Minute) {
		t.Error("a process that exited while watched not seen to go")
	}
	if took := time.Since(start); took > 30*time.Second {
		t.Errorf("exitsWithin waited %v for a process that exited after 100 ms", took)
	}
}
