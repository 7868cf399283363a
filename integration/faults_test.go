package integration

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// copyFile copies the stand-in so a test can break its copy.
func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o755); err != nil {
		t.Fatal(err)
	}
}

// TestFaults: the launcher goes missing, loses its execute bit, hangs, or
// its container dies mid-session. Each gives a clear log line, the session
// ends with the launcher's status or 255, and the server keeps serving.
func TestFaults(t *testing.T) {
	dir := t.TempDir()
	launcher := filepath.Join(dir, "darling")
	copyFile(t, bins.standin, launcher)
	s := startServer(t, serverOpt{args: []string{"--darling", launcher}})

	os.Remove(launcher)
	if r := s.exec("echo hi", ""); r.code != 255 || !strings.Contains(r.stderr, "no such file") {
		t.Errorf("launcher missing: %+v", r)
	}
	if !s.logged(`msg="session not started"`) {
		t.Error("launcher missing: not logged")
	}
	copyFile(t, bins.standin, launcher)
	os.Chmod(launcher, 0o644)
	if r := s.exec("echo hi", ""); r.code != 255 || !strings.Contains(r.stderr, "permission denied") {
		t.Errorf("launcher not executable: %+v", r)
	}
	os.Chmod(launcher, 0o755)
	if r := s.exec("echo back", ""); r.stdout != "back\n" {
		t.Errorf("after the launcher came back: %+v", r)
	}

	// The container dies mid-session: the launcher loses it and says so.
	d := uniqueSleep()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := s.ssh(ctx, "dut", "sleep "+d)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	if !waitFor(time.Minute, func() bool { return len(procsWithArgs("sleep", d)) == 1 }) {
		t.Fatal("sleep never started")
	}
	exec.Command(bins.standin, "--prefix", s.prefix, "shutdown").Run()
	cmd.Wait()
	if code := cmd.ProcessState.ExitCode(); code == 0 || !strings.Contains(stderr.String(), "lost shellspawn") {
		t.Errorf("container died mid-session: exit %d %q", code, stderr.String())
	}
	if !s.logged("the prefix's container is gone") {
		t.Error("container death not logged")
	}
	if r := s.exec("echo rewarmed", ""); r.stdout != "rewarmed\n" {
		t.Errorf("after the container died: %+v", r)
	}

	// A launcher that hangs before the command starts: the session waits
	// (it may be a slow cold start), the client can give up, and the hung
	// launcher is ended with the session; other sessions go on.
	hang := filepath.Join(dir, "hang")
	script := "#!/bin/sh\nif [ -e " + hang + " ]; then exec sleep " + d + "1; fi\nexec " + bins.standin + " \"$@\"\n"
	os.Remove(launcher)
	os.WriteFile(launcher, []byte(script), 0o755)
	os.WriteFile(hang, nil, 0o644)
	hung := s.ssh(context.Background(), "dut", "echo never")
	if err := hung.Start(); err != nil {
		t.Fatal(err)
	}
	if !waitFor(time.Minute, func() bool { return len(procsWithArgs("sleep", d+"1")) == 1 }) {
		t.Fatal("hanging launcher never started")
	}
	os.Remove(hang)
	if r := s.exec("echo meanwhile", ""); r.stdout != "meanwhile\n" {
		t.Errorf("while a launcher hangs: %+v", r)
	}
	hung.Process.Kill()
	hung.Wait()
	if !waitFor(killGrace+5*time.Second, func() bool { return len(procsWithArgs("sleep", d+"1")) == 0 }) {
		t.Error("the hung launcher survived its client")
	}
}
