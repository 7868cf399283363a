package darlingexec

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// runBounded calls l.run in the background, calls during, and returns what
// run returned, or fails the test if run has not returned within limit:
// then it calls unstick, so that run can return and nothing is left.
func runBounded(ctx context.Context, t *testing.T, l *Launcher, command string, limit time.Duration, during, unstick func()) (string, error) {
	t.Helper()
	type result struct {
		out string
		err error
	}
	done := make(chan result, 1)
	go func() {
		out, err := l.run(ctx, command, "")
		done <- result{out, err}
	}()
	if during != nil {
		during()
	}
	select {
	case r := <-done:
		return r.out, r.err
	case <-time.After(limit):
		t.Errorf("run has not returned within %s", limit)
		unstick()
		r := <-done
		return r.out, r.err
	}
}

// killSleepers kills the processes that run sleep arg.
func killSleepers(arg string) func() {
	return func() {
		for _, pid := range sleepers(arg) {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// awaitSleepers waits until a process runs sleep arg.
func awaitSleepers(t *testing.T, arg string) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); len(sleepers(arg)) == 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the command never started")
		}
	}
}

func sleepArg() string { return strconv.Itoa(int(time.Now().UnixNano()%900000) + 100000) }

// TestRunEndsOnCancel: init's run, its context cancelled, ends the command
// and returns once the launcher is reaped, instead of reading its output
// until the command ends on its own.
func TestRunEndsOnCancel(t *testing.T) {
	l := execLauncher(t)
	fakeContainer(t, l.Prefix)
	arg := sleepArg()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	_, err := runBounded(ctx, t, l, "sleep "+arg, 10*time.Second, func() {
		awaitSleepers(t, arg)
		cancel()
	}, killSleepers(arg))
	if !errors.Is(err, context.Canceled) {
		t.Errorf("run: %v, want the cancellation", err)
	}
	if left := sleepers(arg); len(left) != 0 {
		t.Errorf("the command survived: %v", left)
	}
}

// TestRunEndsLeftovers: a process the command left behind, holding its
// stdout, is ended once the command exited, so that run returns the output
// rather than waiting for that process to end.
func TestRunEndsLeftovers(t *testing.T) {
	l := execLauncher(t)
	fakeContainer(t, l.Prefix)
	arg := sleepArg()
	out, err := runBounded(context.Background(), t, l, "sleep "+arg+" & echo hi", 10*time.Second, nil, killSleepers(arg))
	if err != nil || out != "hi\n" {
		t.Errorf("run: %q, %v; want \"hi\\n\"", out, err)
	}
	if left := sleepers(arg); len(left) != 0 {
		t.Errorf("the leftover survived: %v", left)
	}
}

// TestRunOutputHeldOutside: output that a process outside the session
// holds open after the command exited (here the test itself, as a
// container the launcher cold-started would) is given up after
// drainAfterExit, with an error that says so.
func TestRunOutputHeldOutside(t *testing.T) {
	l := execLauncher(t)
	fakeContainer(t, l.Prefix)
	dir := filepath.Dir(l.Path)
	// The launcher says its pid and waits until the test holds its stdout.
	script := "#!/bin/sh\necho $$ > " + dir + "/pid.tmp && mv " + dir + "/pid.tmp " + dir + "/pid\n" +
		"while [ ! -e " + dir + "/go ]; do sleep 0.01; done\n" +
		"[ \"$1\" = --prefix ] && shift 2\nshift\nexec \"$@\"\n"
	if err := os.WriteFile(l.Path, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	var holder *os.File
	release := func() {
		if holder != nil {
			holder.Close()
			holder = nil
		}
	}
	defer release()
	start := time.Now()
	out, err := runBounded(context.Background(), t, l, "echo hi", 10*time.Second, func() {
		var b []byte
		for deadline := time.Now().Add(10 * time.Second); len(b) == 0; time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Error("the launcher never said its pid")
				break
			}
			b, _ = os.ReadFile(filepath.Join(dir, "pid"))
		}
		f, err := os.OpenFile("/proc/"+strings.TrimSpace(string(b))+"/fd/1", os.O_WRONLY, 0)
		if err != nil {
			t.Errorf("hold the launcher's stdout: %v", err)
		}
		holder = f
		os.WriteFile(filepath.Join(dir, "go"), nil, 0o644)
	}, release)
	if err == nil || !strings.Contains(err.Error(), "output stayed open") {
		t.Errorf("run: %q, %v; want an error saying the output stayed open", out, err)
	}
	if took := time.Since(start); took < drainAfterExit {
		t.Errorf("run gave up after %s, before drainAfterExit", took)
	}
}
