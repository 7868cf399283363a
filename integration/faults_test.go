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
	// Faults of a launcher's start: a launcher started ahead of the
	// session (--prespawn) would have started before the fault
	// (TestPrespawn covers those).
	s := startServer(t, serverOpt{args: []string{"--darling", launcher, "--prespawn", "0"}})

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
	shutdownStandin(s.prefix)
	cmd.Wait()
	// Darling's launcher exits 1 without a word when its container dies.
	if code := cmd.ProcessState.ExitCode(); code != 1 {
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

// TestFullDisk: with the prefix on a full filesystem, a command's writes
// fail with its own status, an SFTP upload fails with a logged reason, and
// the server keeps serving.
func TestFullDisk(t *testing.T) {
	dir, err := os.MkdirTemp("", "dfull")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", dir).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v %s", err, out)
	}
	defer exec.Command("umount", "-l", dir).Run()
	prefix := filepath.Join(dir, "p")
	s := startServer(t, serverOpt{args: []string{"--prefix", prefix}})
	defer shutdownStandin(prefix)
	r := s.exec("head -c 50000000 /dev/zero > ~/fill", "")
	if r.code == 0 || !strings.Contains(r.stderr, "No space left") {
		t.Errorf("writing past a full disk: %+v", r)
	}
	big := filepath.Join(s.dir, "big")
	if err := os.WriteFile(big, make([]byte, 8<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := s.sftpBatch(t, "put "+big+" big\n"); err == nil {
		t.Errorf("sftp put on a full disk succeeded: %s", out)
	}
	if !s.logged("sftp write failed") || !s.logged("no space left on device") {
		t.Error("the full disk was not logged")
	}
	s.exec("rm -f ~/fill ~/big", "")
	if r := s.exec("echo still serving", ""); r.stdout != "still serving\n" {
		t.Errorf("after the disk filled: %+v", r)
	}
}
