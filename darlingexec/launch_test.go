package darlingexec

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// execLauncher writes a launcher that runs the command in place, as its
// own process, and exits with its status. No container is started.
func execLauncher(t *testing.T) *Launcher {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "launcher")
	script := "#!/bin/sh\n[ \"$1\" = --prefix ] && shift 2\nshift\nexec \"$@\"\n"
	if err := os.WriteFile(path, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return &Launcher{
		Path: path, Prefix: filepath.Join(dir, "p"), Style: StyleFlag, LogPath: filepath.Join(dir, "launcher.log"),
		KillGrace: time.Second, WarmTimeout: 10 * time.Second,
		Log:     slog.New(slog.NewTextHandler(io.Discard, nil)),
		HostEnv: []string{"HOME=" + dir, "PATH=" + os.Getenv("PATH")},
	}
}

// stoppingContainers starts n fake containers for l's prefix, the first
// one named in .init.pid. Each start of the launcher kills the container
// .init.pid names and names the next one there, as if the container died
// just before the launcher looked for it and another was started later.
// It returns how many starts there were so far.
func stoppingContainers(t *testing.T, l *Launcher, n int) (execs func() int) {
	t.Helper()
	cs := make([]*exec.Cmd, n)
	for i := n - 1; i >= 0; i-- { // the last started is named in .init.pid
		cs[i] = startNamed(t, l.Prefix, "darlingserver", true)
	}
	var mu sync.Mutex
	count := 0
	l.afterStart = func() {
		mu.Lock()
		defer mu.Unlock()
		if count < n-1 {
			cs[count].Process.Kill()
			cs[count].Wait()
			os.WriteFile(filepath.Join(l.Prefix, initPidFile), []byte(strconv.Itoa(cs[count+1].Process.Pid)), 0o644)
		}
		count++
	}
	return func() int {
		mu.Lock()
		defer mu.Unlock()
		return count
	}
}

// TestStartRetriesWhenContainerStops: when the container Start found
// running is gone by the time the launcher has started (Darling's launcher
// would then cold-start one that keeps the session's output open), that
// launcher is ended and the session started once more, in the container
// running then.
func TestStartRetriesWhenContainerStops(t *testing.T) {
	l := execLauncher(t)
	execs := stoppingContainers(t, l, 2)
	p, err := l.Start(context.Background(), Request{Command: "echo ok"})
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	out, _ := io.ReadAll(p.Stdout)
	st, _ := p.Wait()
	p.Sweep(context.Background())
	p.CloseOutput()
	if n := execs(); n != 2 {
		t.Errorf("the launcher ran %d times, want 2: the first, whose container stopped, is not kept", n)
	}
	if string(out) != "ok\n" || st.Code != 0 || st.Ended {
		t.Errorf("the session started again: output %q, status %+v", out, st)
	}
}

// TestStartFailsWhenContainerStopsTwice: a container that stops again
// while the session starts a second time is an error that says so, and
// neither launcher is left running.
func TestStartFailsWhenContainerStopsTwice(t *testing.T) {
	l := execLauncher(t)
	execs := stoppingContainers(t, l, 3)
	arg := strconv.Itoa(int(time.Now().UnixNano()%900000) + 100000)
	p, err := l.Start(context.Background(), Request{Command: "sleep " + arg})
	if err == nil {
		p.End(context.Background())
		t.Fatal("Start kept a launcher whose container had stopped")
	}
	if !strings.Contains(err.Error(), "the prefix's container stopped while the session started") || !errors.Is(err, errContainerStopped) {
		t.Errorf("Start: %v", err)
	}
	if n := execs(); n != 2 {
		t.Errorf("the launcher ran %d times, want 2", n)
	}
	if left := sleepers(arg); len(left) != 0 {
		t.Errorf("session processes left running: %v", left)
	}
}

// TestStillRunning: the container found before a launcher started is
// still running only while that very process lives, even when another
// container has taken its place since.
func TestStillRunning(t *testing.T) {
	prefix := filepath.Join(t.TempDir(), "p")
	next := startNamed(t, prefix, "darlingserver", true)
	first := fakeContainer(t, prefix)
	l := testLauncher(prefix)
	c := l.verified()
	if c.pid != first.Process.Pid {
		t.Fatalf("verified %d, want %d", c.pid, first.Process.Pid)
	}
	if !l.stillRunning(c) {
		t.Error("a running container is taken for stopped")
	}
	if !l.stillRunning(container{}) {
		t.Error("no container found before: nothing to check, yet stillRunning says no")
	}
	first.Process.Kill()
	first.Wait()
	os.WriteFile(filepath.Join(prefix, initPidFile), []byte(strconv.Itoa(next.Process.Pid)), 0o644)
	if l.stillRunning(c) {
		t.Error("a container that stopped, replaced by another, is taken for running")
	}
	if l.containerPid() != next.Process.Pid {
		t.Error("the new container was not verified")
	}
}
