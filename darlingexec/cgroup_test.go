package darlingexec

import (
	"context"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
)

// TestCgroupSparesHostProcesses: a process of the host (our PID
// namespace) found in a session's cgroup, which only a trick could have
// put there, is neither signalled nor killed with the cgroup when the
// session ends.
func TestCgroupSparesHostProcesses(t *testing.T) {
	cgs, err := FindCgroups()
	if err != nil {
		t.Skipf("no writable cgroup v2: %v", err)
	}
	defer cgs.Close()
	cg, err := cgs.newSession("test")
	if err != nil {
		t.Fatal(err)
	}
	host := exec.Command("sleep", "60")
	if err := host.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- host.Wait() }()
	defer func() {
		// Back where it came from, so that the cgroup can go.
		_ = writeCgroupFile(filepath.Join(filepath.Dir(cgs.Dir()), "cgroup.procs"), strconv.Itoa(host.Process.Pid))
		host.Process.Kill()
		<-done
		_ = cg.remove()
	}()
	if err := writeCgroupFile(filepath.Join(cg.dir, "cgroup.procs"), strconv.Itoa(host.Process.Pid)); err != nil {
		t.Fatal(err)
	}
	l := &Launcher{Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	ps := newSessionProcs("test", 0, 0)
	ps.cg = cg
	l.killSession(context.Background(), ps, 0)
	select {
	case err := <-done:
		t.Fatalf("the host process was killed with the session: %v", err)
	default:
	}
	if !ps.foreign {
		t.Error("the host process in the cgroup went unnoticed")
	}
}

// TestCgroupsLeftSessions: the cgroups of sessions nobody removed (the
// server stopped waiting for them at shutdown, or was killed) do not
// outlive Close, nor keep a server that later gets the same pid from
// making its cgroup, even if a process still runs in one of them.
func TestCgroupsLeftSessions(t *testing.T) {
	killed, err := FindCgroups()
	if err != nil {
		t.Skipf("no writable cgroup v2: %v", err)
	}
	t.Cleanup(killed.Close)
	if !killed.created {
		t.Skip("the cgroup is not made by FindCgroups here")
	}
	if _, err := killed.newSession("left-empty"); err != nil {
		t.Fatal(err)
	}
	held, err := killed.newSession("left-populated")
	if err != nil {
		t.Fatal(err)
	}
	survivor := exec.Command("sleep", "60")
	if err := survivor.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = writeCgroupFile(filepath.Join(filepath.Dir(killed.Dir()), "cgroup.procs"), strconv.Itoa(survivor.Process.Pid))
		survivor.Process.Kill()
		survivor.Wait()
		_ = held.remove()
	})
	if err := writeCgroupFile(filepath.Join(held.dir, "cgroup.procs"), strconv.Itoa(survivor.Process.Pid)); err != nil {
		t.Fatal(err)
	}
	// The same pid again, as after a restart.
	cgs, err := FindCgroups()
	if err != nil {
		t.Fatalf("a killed server's cgroup with sessions' left in it: %v", err)
	}
	t.Cleanup(cgs.Close)
	if cgs.Dir() == killed.Dir() {
		t.Fatalf("%s was taken again with a process in it", cgs.Dir())
	}
	if _, err := os.Stat(filepath.Join(killed.Dir(), "s-left-empty")); !os.IsNotExist(err) {
		t.Errorf("a killed server's empty session cgroup was left: %v", err)
	}
	for _, id := range []string{"a", "b"} {
		if _, err := cgs.newSession(id); err != nil {
			t.Fatal(err)
		}
	}
	cgs.Close()
	if _, err := os.Stat(cgs.Dir()); !os.IsNotExist(err) {
		t.Errorf("%s outlived Close with sessions' cgroups left in it: %v", cgs.Dir(), err)
	}
}
