package integration

import (
	"bytes"
	"context"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestShutdownDrains: on SIGTERM the server stops accepting, a running
// session that ends within the grace ends as it would have, and then the
// server exits.
func TestShutdownDrains(t *testing.T) {
	s := startServer(t, serverOpt{args: []string{"--shutdown-grace", "60s"}})
	d := uniqueSleep()
	marker := s.inPrefix("private/tmp/go-" + d)
	cmd := s.ssh(context.Background(), "dut", "sleep "+d+" & while [ ! -e /private/tmp/go-"+d+" ]; do sleep 0.05; done; kill $!; echo finished; exit 3")
	var out bytes.Buffer
	cmd.Stdout = &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	if !waitFor(time.Minute, func() bool { return len(procsWithArgs("sleep", d)) == 1 }) {
		t.Fatal("session never started")
	}
	s.cmd.Process.Signal(syscall.SIGTERM)
	if !s.logged("waiting for running sessions") {
		t.Fatal("server did not start draining")
	}
	// New connections are refused while it drains.
	if r, err := s.ssh(context.Background(), "dut", "true").CombinedOutput(); err == nil {
		t.Errorf("a new session was accepted while draining: %s", r)
	}
	os.WriteFile(marker, nil, 0o644)
	cmd.Wait()
	if code := cmd.ProcessState.ExitCode(); code != 3 || out.String() != "finished\n" {
		t.Errorf("drained session: exit %d, %q; want 3 and its output", code, out.String())
	}
	select {
	case <-s.exited:
	case <-time.After(time.Minute):
		t.Fatal("server did not exit after its last session")
	}
}

// TestReloadKeys: SIGHUP reloads the authorized keys without dropping
// running sessions.
func TestReloadKeys(t *testing.T) {
	s := startServer(t, serverOpt{})
	d := uniqueSleep()
	running := s.ssh(context.Background(), "dut", "sleep "+d+"; echo kept")
	var out bytes.Buffer
	running.Stdout = &out
	if err := running.Start(); err != nil {
		t.Fatal(err)
	}
	if !waitFor(time.Minute, func() bool { return len(procsWithArgs("sleep", d)) == 1 }) {
		t.Fatal("session never started")
	}
	added := newKey(t, s.dir, "id_new")
	pub, _ := os.ReadFile(added + ".pub")
	if err := os.WriteFile(s.clientKey+".pub", pub, 0o644); err != nil {
		t.Fatal(err)
	}
	s.cmd.Process.Signal(syscall.SIGHUP)
	if !s.logged("authorized keys reloaded") {
		t.Fatal("no reload logged")
	}
	if err := s.ssh(context.Background(), "dut", "true").Run(); err == nil {
		t.Error("the removed key still logs in")
	}
	if out, err := s.ssh(context.Background(), "-i", added, "dut", "echo new").Output(); err != nil || string(out) != "new\n" {
		t.Errorf("the added key: %v %q", err, out)
	}
	// A bad file keeps the keys in force.
	os.WriteFile(s.clientKey+".pub", []byte("garbage\n"), 0o644)
	s.cmd.Process.Signal(syscall.SIGHUP)
	if !s.logged("reload authorized keys failed") {
		t.Fatal("bad reload not logged")
	}
	if out, err := s.ssh(context.Background(), "-i", added, "dut", "echo still").Output(); err != nil || string(out) != "still\n" {
		t.Errorf("after a bad reload: %v %q", err, out)
	}
	for _, p := range procsWithArgs("sleep", d) {
		syscall.Kill(p, syscall.SIGTERM)
	}
	running.Wait()
	if !strings.Contains(out.String(), "kept") {
		t.Errorf("the running session was dropped by the reload: %q", out.String())
	}
}
