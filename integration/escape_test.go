package integration

import (
	"bufio"
	"context"
	"fmt"
	"strings"
	"testing"
	"time"
)

// escapes are ways a session's process can try to outlive it: each
// starts `sleep D` so that it leaves the session's process tree, its
// environment (the marker the tracker looks for), or both. caughtByTracker
// says whether the marker and parentage tracker alone is bound to end it.
var escapes = []struct {
	name            string
	cmd             string // %[1]s is the sleep's unique argument
	caughtByTracker bool
}{
	{"background", "sleep %[1]s &", true},
	{"setsid -f", "setsid -f sleep %[1]s", true},
	{"nohup", "nohup sleep %[1]s >/dev/null 2>&1 &", true},
	{"env -i", "env -i sleep %[1]s &", false},
	{"env -i setsid -f", "env -i setsid -f sleep %[1]s", false},
	{"double fork", "(env -i sleep %[1]s &)", false},
	{"nohup env -i", "nohup env -i sleep %[1]s >/dev/null 2>&1 &", false},
	{"disown", "bash -c 'env -i sleep %[1]s & disown'", false},
	{"exec env -i", "(exec env -i sh -c 'sleep %[1]s & exit')", false},
}

// TestEscapesEnd: whatever a command does to leave its session, every
// process it started is gone within the kill grace and a second once the
// client is gone, with a cgroup per session. Without cgroups (the
// fallback), what the tracker is bound to catch is gone as well.
func TestEscapesEnd(t *testing.T) {
	for _, mode := range []struct {
		name string
		args []string
	}{{"cgroup", nil}, {"tracker", []string{"--session-cgroups", "off"}}} {
		t.Run(mode.name, func(t *testing.T) {
			s := startServer(t, serverOpt{args: mode.args})
			if mode.name == "cgroup" && !s.logged("each session gets a cgroup of its own") {
				t.Skip("no writable cgroup v2 on this host")
			}
			for _, e := range escapes {
				if mode.name == "tracker" && !e.caughtByTracker {
					continue
				}
				d := uniqueSleep()
				escapeAndLeave(t, s, fmt.Sprintf(e.cmd, d)+"\necho started; sleep 600", d)
				if !waitFor(killGrace+time.Second, func() bool { return len(procsWithArgs("sleep", d)) == 0 }) {
					t.Errorf("%s: sleep %s outlived its session", e.name, d)
				}
			}
		})
	}
}

// TestEscapeAtDisconnect: a process that escapes a millisecond after the
// client left is still the session's.
func TestEscapeAtDisconnect(t *testing.T) {
	s := startServer(t, serverOpt{})
	if !s.logged("each session gets a cgroup of its own") {
		t.Skip("no writable cgroup v2 on this host")
	}
	d := uniqueSleep()
	escapeAndLeave(t, s, "echo started; sleep 0.001; env -i setsid -f sleep "+d+"; sleep 600", "")
	// The escape may come after the session began to end.
	if !waitFor(killGrace+time.Second, func() bool { return len(procsWithArgs("sleep", d)) == 0 }) {
		t.Errorf("sleep %s outlived its session", d)
	}
}

// escapeAndLeave runs command, waits for its "started" line (and, if d is
// set, for `sleep d` to run), then kills the client.
func escapeAndLeave(t *testing.T, s *server, command, d string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := s.ssh(ctx, "dut", command)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Wait()
	defer cmd.Process.Kill()
	line, err := bufio.NewReader(out).ReadString('\n')
	if strings.TrimSpace(line) != "started" {
		t.Fatalf("%q: %q %v", command, line, err)
	}
	if d != "" && !waitFor(time.Minute, func() bool { return len(procsWithArgs("sleep", d)) == 1 }) {
		t.Fatalf("%q: sleep %s never started", command, d)
	}
}
