package darlingexec

import (
	"errors"
	"fmt"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// startSleeper starts a child that runs until killed. The channel it
// returns gets the child's wait status once it has exited, and is then
// closed.
func startSleeper(t *testing.T) (*exec.Cmd, <-chan syscall.WaitStatus) {
	t.Helper()
	cmd := exec.Command("sleep", "1000")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan syscall.WaitStatus, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer close(exited)
		cmd.Wait()
		exited <- cmd.ProcessState.Sys().(syscall.WaitStatus)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-done
	})
	return cmd, exited
}

// TestSignalChecksStartTime: the kill loop signals a pid only as the
// process the session knows, by its start time. A pid whose process
// started at another time than the one recorded (the session's process
// exited and the pid went to another) is not signalled; with the right
// start time it is. Both through a pidfd and through the fallback without
// pidfds.
func TestSignalChecksStartTime(t *testing.T) {
	for _, tc := range []struct {
		name   string
		signal func(ps *sessionProcs, pid int, start uint64)
	}{
		{"session", func(ps *sessionProcs, pid int, start uint64) {
			ps.mu.Lock()
			ps.known[pid] = start
			ps.mu.Unlock()
			ps.signal([]int{pid}, unix.SIGKILL)
		}},
		{"without pidfd", func(_ *sessionProcs, pid int, start uint64) {
			_ = killChecked(pid, start, unix.SIGKILL)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd, exited := startSleeper(t)
			pid := cmd.Process.Pid
			start := startTime(pid)
			if start == 0 {
				t.Fatalf("no start time for pid %d", pid)
			}
			ps := newSessionProcs("test", 0, 0)
			tc.signal(ps, pid, start+1)
			select {
			case ws := <-exited:
				t.Fatalf("a pid whose start time is not the known one was signalled: %v", ws)
			case <-time.After(300 * time.Millisecond):
			}
			tc.signal(ps, pid, start)
			select {
			case ws := <-exited:
				if ws.Signal() != unix.SIGKILL {
					t.Errorf("the process ended with %v, want SIGKILL", ws)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("the known process was not signalled")
			}
		})
	}
}

// TestSignalProcGone: a process that has exited, reaped or not, is not
// signalled, and signalProc says why.
func TestSignalProcGone(t *testing.T) {
	cmd, exited := startSleeper(t)
	pid := cmd.Process.Pid
	start := startTime(pid)
	if err := signalProc(pid, start+1, unix.SIGKILL); !errors.Is(err, errNotOurs) {
		t.Errorf("wrong start time: %v, want errNotOurs", err)
	}
	if err := signalProc(pid, start, unix.SIGKILL); err != nil {
		t.Fatalf("signalProc: %v", err)
	}
	<-exited
	if err := signalProc(pid, start, unix.SIGKILL); err == nil {
		t.Error("a reaped process was signalled")
	}
}

// TestEnvironReadBounded: the tracker reads at most maxEnviron bytes of a
// process's environment, however large it is.
func TestEnvironReadBounded(t *testing.T) {
	cmd := exec.Command("sleep", "60")
	for i := range 12 {
		cmd.Env = append(cmd.Env, fmt.Sprintf("BIG%d=%s", i, strings.Repeat("x", 100<<10)))
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Wait()
	defer cmd.Process.Kill()
	var r procReader
	var b []byte
	var err error
	// Start returns while the child's exec is still setting up its
	// environment (it shows none yet): no event says when it is done.
	for deadline := time.Now().Add(10 * time.Second); len(b) == 0 && time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		b, err = r.readMax(fmt.Sprintf("/proc/%d/environ", cmd.Process.Pid), maxEnviron)
	}
	if err != nil || len(b) != maxEnviron {
		t.Fatalf("read %d bytes (%v), want %d of an environment of 1.2 MB", len(b), err, maxEnviron)
	}
}

// TestTrackerRereadsAfterExec: a process the tracker saw before it
// exec'd with the session's marker (as the shell Darling forks, seen
// between its fork and its exec, shows its parent's environment) is the
// session's once it has exec'd: the same pid and start time, a new
// environment.
func TestTrackerRereadsAfterExec(t *testing.T) {
	cmd := exec.Command("sh", "-c", "read x; exec env "+SessionVar+"=s1 sleep 60")
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Wait()
	defer cmd.Process.Kill()
	pid := cmd.Process.Pid
	var tr tracker
	ps := newSessionProcs("s1", 0, 0)
	if slices.Contains(tr.scan(ps), pid) {
		t.Fatal("the shell, without the marker, taken for the session's")
	}
	in.Write([]byte("\n"))
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if slices.Contains(tr.scan(ps), pid) {
			return
		}
	}
	t.Error("the process that exec'd with the marker was never found")
}
