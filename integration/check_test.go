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

// registry holds what `register` writes, on temporary paths: an ssh
// configuration that includes a folder of its own, a known_hosts file
// and a machines file.
type registry struct {
	t         *testing.T
	dir       string
	sshConfig string // includes dir/ssh_config.d/*.conf
	machines  string
}

func newRegistry(t *testing.T) *registry {
	t.Helper()
	r := &registry{t: t, dir: t.TempDir()}
	r.sshConfig = filepath.Join(r.dir, "ssh_config")
	r.machines = filepath.Join(r.dir, "machines")
	inc := "Include " + filepath.Join(r.dir, "ssh_config.d") + "/*.conf\nHost *\n  GlobalKnownHostsFile /dev/null\n"
	if err := os.WriteFile(r.sshConfig, []byte(inc), 0o644); err != nil {
		t.Fatal(err)
	}
	return r
}

// register runs `darling-sshd register` on the registry's paths.
func (r *registry) register(args ...string) (string, int) {
	r.t.Helper()
	all := append([]string{"register", "--ssh-config-dir", filepath.Join(r.dir, "ssh_config.d"),
		"--system-ssh-config", r.sshConfig, "--user-ssh-config", filepath.Join(r.dir, "user_config"),
		"--known-hosts", filepath.Join(r.dir, "known_hosts"), "--machines", r.machines}, args...)
	return runServerBin(r.t, all...)
}

// check runs `darling-sshd check` on the registry's paths.
func (r *registry) check(args ...string) (string, int) {
	r.t.Helper()
	return runServerBin(r.t, append([]string{"check", "--ssh-config", r.sshConfig, "--machines", r.machines, "--timeout", "60s"}, args...)...)
}

// runServerBin runs the darling-sshd binary and returns its combined
// output and exit status.
func runServerBin(t *testing.T, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bins.server, args...)
	cmd.Env = []string{"HOME=/root", "PATH=" + os.Getenv("PATH"), noRaceExitSleep}
	out, err := cmd.CombinedOutput()
	if _, ok := err.(*exec.ExitError); err != nil && !ok {
		t.Fatalf("darling-sshd %v: %v", args, err)
	}
	return string(out), cmd.ProcessState.ExitCode()
}

// TestCheck: `check` passes every step against a registered, working
// builder, and otherwise fails the step at fault with a message naming
// the fix, exit status 1.
func TestCheck(t *testing.T) {
	s := startServer(t, serverOpt{})
	setupNix(t, s)
	r := newRegistry(t)
	base := []string{"--listen", s.addr, "--host-key", s.hostKey, "--identity", s.clientKey}
	if out, code := r.register(base...); code != 0 {
		t.Fatalf("register: exit %d\n%s", code, out)
	}
	out, code := r.check()
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if code != 0 || len(lines) != 5 {
		t.Fatalf("healthy: exit %d, want 0 and five ok lines:\n%s", code, out)
	}
	for i, step := range []string{"machines", "ssh config", "identity", "serve", "daemon"} {
		if !strings.HasPrefix(lines[i], "ok    "+step) {
			t.Errorf("healthy: line %d %q, want ok %s", i, lines[i], step)
		}
	}
	if !strings.Contains(lines[3], "serve protocol 2.") || !strings.Contains(lines[4], "daemon protocol 1.") {
		t.Errorf("healthy: the protocol versions are not reported:\n%s", out)
	}

	other := newKey(t, s.dir, "id_other")
	for _, tc := range []struct {
		name     string
		register []string // register again with these flags (after base)
		check    []string
		step     string
		fix      string
	}{
		{"host key changed", []string{"--host-key", other}, nil, "host key", "re-run darling-sshd register"},
		{"key not authorized", []string{"--identity", other}, nil, "auth", "add " + other + ".pub to serve's --authorized-keys"},
		{"nothing listening", []string{"--listen", "127.0.0.1:1"}, nil, "tcp", "start darling-sshd serve"},
		{"nix-store missing", nil, []string{"--command", "nix-store-missing --serve --write"}, "serve", "install Nix in the prefix"},
		{"command failing", nil, []string{"--command", "false"}, "serve", "exited with status 1"},
		{"nix-daemon missing", nil, []string{"--daemon-command", "nix-daemon-missing --stdio"}, "daemon", "install Nix in the prefix"},
		{"not registered", []string{"--undo"}, nil, "machines", "run darling-sshd register"},
	} {
		if tc.register != nil {
			if out, code := r.register(append(append([]string{}, base...), tc.register...)...); code != 0 {
				t.Fatalf("%s: register: exit %d\n%s", tc.name, code, out)
			}
		}
		out, code := r.check(tc.check...)
		t.Logf("%s:\n%s", tc.name, out)
		if code != 1 || !strings.Contains(out, "FAIL  "+tc.step) || !strings.Contains(out, tc.fix) {
			t.Errorf("%s: exit %d, want 1 with FAIL %s naming %q:\n%s", tc.name, code, tc.step, tc.fix, out)
		}
		if out, code := r.register(base...); code != 0 {
			t.Fatalf("%s: register again: exit %d\n%s", tc.name, code, out)
		}
	}
}
