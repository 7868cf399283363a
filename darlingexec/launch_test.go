package darlingexec

import (
	"bytes"
	"context"
	"encoding/binary"
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

	"golang.org/x/sys/unix"
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

// onExec calls fn each time the file at path is executed, while the exec
// waits: a fanotify permission event holds execve until fn has returned
// and the exec is allowed. So fn runs after the launcher's fork and before
// exec.Cmd.Start returns, deterministically. It needs root and
// FAN_OPEN_EXEC_PERM (Linux 5.0), else the test is skipped.
func onExec(t *testing.T, path string, fn func()) {
	t.Helper()
	fd, err := unix.FanotifyInit(unix.FAN_CLASS_CONTENT|unix.FAN_CLOEXEC|unix.FAN_NONBLOCK, unix.O_RDONLY|unix.O_CLOEXEC|unix.O_LARGEFILE)
	if err != nil {
		t.Skipf("fanotify: %v", err)
	}
	if err := unix.FanotifyMark(fd, unix.FAN_MARK_ADD, unix.FAN_OPEN_EXEC_PERM, unix.AT_FDCWD, path); err != nil {
		unix.Close(fd)
		t.Skipf("fanotify exec permission events: %v", err)
	}
	f := os.NewFile(uintptr(fd), "fanotify")
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 4096)
		for {
			n, err := f.Read(buf)
			if err != nil {
				return
			}
			r := bytes.NewReader(buf[:n])
			for r.Len() > 0 {
				var m unix.FanotifyEventMetadata
				if binary.Read(r, binary.NativeEndian, &m) != nil {
					break
				}
				r.Seek(int64(m.Event_len)-int64(binary.Size(m)), io.SeekCurrent)
				if m.Mask&unix.FAN_OPEN_EXEC_PERM != 0 {
					fn()
				}
				var resp bytes.Buffer
				binary.Write(&resp, binary.NativeEndian, unix.FanotifyResponse{Fd: m.Fd, Response: unix.FAN_ALLOW})
				f.Write(resp.Bytes())
				if m.Fd >= 0 {
					unix.Close(int(m.Fd))
				}
			}
		}
	}()
	// Closing the group allows any exec still waiting.
	t.Cleanup(func() {
		f.Close()
		<-done
	})
}

// stoppingContainers starts n fake containers for l's prefix, the first
// one named in .init.pid. Each exec of the launcher kills the container
// .init.pid names and names the next one there, as if the container died
// just before the launcher looked for it and another was started later.
// It returns how many execs there were so far.
func stoppingContainers(t *testing.T, l *Launcher, n int) (execs func() int) {
	t.Helper()
	cs := make([]*exec.Cmd, n)
	for i := n - 1; i >= 0; i-- { // the last started is named in .init.pid
		cs[i] = startNamed(t, l.Prefix, "darlingserver", true)
	}
	var mu sync.Mutex
	count := 0
	onExec(t, l.Path, func() {
		mu.Lock()
		defer mu.Unlock()
		if count < n-1 {
			cs[count].Process.Kill()
			cs[count].Wait()
			os.WriteFile(filepath.Join(l.Prefix, initPidFile), []byte(strconv.Itoa(cs[count+1].Process.Pid)), 0o644)
		}
		count++
	})
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
