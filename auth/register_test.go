package auth

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// testRegistration returns a Registration on files under a temp folder,
// the system config including its ssh_config.d when include is true.
func testRegistration(t *testing.T, include bool) *Registration {
	t.Helper()
	dir := t.TempDir()
	r := &Registration{
		Builder: Builder{Alias: "darling-builder", Protocol: "ssh", User: "root", Systems: []string{"x86_64-darwin"},
			Identity: "/k", MaxJobs: 4, SpeedFactor: 1, Host: "127.0.0.1", Port: "2222",
			KnownHosts: filepath.Join(dir, "known_hosts"), PublicHostKey: newPub(t)},
		SSHConfigDir:    filepath.Join(dir, "ssh_config.d"),
		SystemSSHConfig: filepath.Join(dir, "ssh_config"),
		UserSSHConfig:   filepath.Join(dir, "dot-ssh", "config"),
		Machines:        filepath.Join(dir, "nix", "machines"),
	}
	sys := "# Debian\nInclude ssh_config.d/*.conf\nHost *\n  SendEnv LANG\n"
	if !include {
		sys = "Host *\n  SendEnv LANG\n"
	}
	if err := os.WriteFile(r.SystemSSHConfig, []byte(sys), 0o644); err != nil {
		t.Fatal(err)
	}
	return r
}

func apply(t *testing.T, r *Registration, undo bool) []FileChange {
	t.Helper()
	changes, err := r.Plan(undo)
	if err != nil {
		t.Fatal(err)
	}
	if err := Apply(changes); err != nil {
		t.Fatal(err)
	}
	return changes
}

func read(t *testing.T, path string) string {
	b, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return string(b)
}

// TestRegisterIncluded: with an Include, the block goes to the folder;
// a second run changes nothing; an unmarked line for the alias in the
// machines file is replaced, others' lines are kept; undo removes only
// what register wrote.
func TestRegisterIncluded(t *testing.T) {
	r := testRegistration(t, true)
	os.MkdirAll(filepath.Dir(r.Machines), 0o755)
	others := "ssh://other x86_64-linux - 1\n"
	os.WriteFile(r.Machines, []byte(others+"ssh://root@darling-builder x86_64-darwin /old 1\n"), 0o644)
	os.WriteFile(r.Builder.KnownHosts, []byte("other ssh-ed25519 AAAA\ndarling-builder ssh-ed25519 OLD\n"), 0o644)
	apply(t, r, false)
	if got := read(t, r.IncludePath()); !strings.Contains(got, "Host darling-builder\n") || !strings.HasPrefix(got, "# Written by darling-sshd register") {
		t.Errorf("include file:\n%s", got)
	}
	if got := read(t, r.UserSSHConfig); got != "" {
		t.Errorf("user config written although the folder is included:\n%s", got)
	}
	m := read(t, r.Machines)
	if !strings.HasPrefix(m, others) || strings.Contains(m, "/old") || strings.Count(m, "darling-builder") != 2 {
		t.Errorf("machines:\n%s", m)
	}
	if kh := read(t, r.Builder.KnownHosts); !strings.HasPrefix(kh, "other ssh-ed25519 AAAA\n") || strings.Contains(kh, "OLD") ||
		!strings.Contains(kh, "darling-builder "+AuthorizedKeyLine(r.Builder.PublicHostKey)) {
		t.Errorf("known hosts:\n%s", kh)
	}
	for _, c := range apply(t, r, false) {
		if c.Changed() {
			t.Errorf("second run changes %s:\n%s", c.Path, c.Describe())
		}
	}
	apply(t, r, true)
	if _, err := os.Stat(r.IncludePath()); !os.IsNotExist(err) {
		t.Errorf("include file left after undo: %v", err)
	}
	if m := read(t, r.Machines); m != others {
		t.Errorf("machines after undo: %q, want %q", m, others)
	}
	if kh := read(t, r.Builder.KnownHosts); kh != "other ssh-ed25519 AAAA\n" {
		t.Errorf("known hosts after undo: %q", kh)
	}
}

// TestRegisterUserConfig: without an Include, a marked block goes first
// in root's config (its folder created 0700) and the rest is kept.
func TestRegisterUserConfig(t *testing.T) {
	r := testRegistration(t, false)
	os.MkdirAll(filepath.Dir(r.UserSSHConfig), 0o700)
	mine := "Host *\n  Port 22\n"
	os.WriteFile(r.UserSSHConfig, []byte(mine), 0o600)
	apply(t, r, false)
	got := read(t, r.UserSSHConfig)
	if !strings.HasPrefix(got, "# darling-sshd register darling-builder begin\n") || !strings.HasSuffix(got, "\n"+mine) {
		t.Errorf("user config:\n%s", got)
	}
	if _, err := os.Stat(r.IncludePath()); !os.IsNotExist(err) {
		t.Error("include file written although not included")
	}
	r.Builder.Port = "2223"
	apply(t, r, false)
	if got := read(t, r.UserSSHConfig); strings.Count(got, "Host darling-builder") != 1 || !strings.Contains(got, "Port 2223") {
		t.Errorf("user config after a port change:\n%s", got)
	}
	apply(t, r, true)
	if got := read(t, r.UserSSHConfig); got != mine {
		t.Errorf("user config after undo: %q, want %q", got, mine)
	}
}

// TestRegisterLeavesForeignIncludeFile: a file of the include's name that
// register did not write is neither removed nor overwritten silently.
func TestRegisterLeavesForeignIncludeFile(t *testing.T) {
	r := testRegistration(t, false)
	os.MkdirAll(r.SSHConfigDir, 0o755)
	os.WriteFile(r.IncludePath(), []byte("# mine\n"), 0o644)
	apply(t, r, true)
	if got := read(t, r.IncludePath()); got != "# mine\n" {
		t.Errorf("a person's file was changed: %q", got)
	}
}

func TestFindMachine(t *testing.T) {
	text := "# comment\nssh://a x86_64-linux\nssh-ng://root@darling-builder?remote-store=x x86_64-darwin /k 4 1 - - QUJD # note\n"
	m, ok := FindMachine([]byte(text), "darling-builder")
	if !ok || m.Protocol != "ssh-ng" || m.Identity != "/k" || m.PublicHostKey != "QUJD" {
		t.Errorf("FindMachine = %+v %v", m, ok)
	}
	if _, ok := FindMachine([]byte(text), "b"); ok {
		t.Error("found a machine that is not there")
	}
}

// TestRegisterKeepsLinksAndGlobals: a machines file that is a link is
// written through (the link stays); options at the top of root's config
// stay global after the block is put first; a marker comment followed by
// another builder's line keeps that line.
func TestRegisterKeepsLinksAndGlobals(t *testing.T) {
	r := testRegistration(t, false)
	real := filepath.Join(filepath.Dir(r.SystemSSHConfig), "machines.real")
	os.MkdirAll(filepath.Dir(r.Machines), 0o755)
	other := "ssh://other x86_64-linux - 1"
	os.WriteFile(real, []byte("# darling-sshd register darling-builder\n"+other+"\n"), 0o644)
	if err := os.Symlink(real, r.Machines); err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(filepath.Dir(r.UserSSHConfig), 0o700)
	os.WriteFile(r.UserSSHConfig, []byte("ServerAliveInterval 30\n"), 0o600)
	apply(t, r, false)
	if st, err := os.Lstat(r.Machines); err != nil || st.Mode()&os.ModeSymlink == 0 {
		t.Errorf("the machines link was replaced: %v %v", st, err)
	}
	if m := read(t, real); !strings.Contains(m, other+"\n") || !strings.Contains(m, "ssh://root@darling-builder ") {
		t.Errorf("machines through the link:\n%s", m)
	}
	cfg := read(t, r.UserSSHConfig)
	host := strings.Index(cfg, "Host *\n")
	if host < 0 || host > strings.Index(cfg, "ServerAliveInterval 30") {
		t.Errorf("a global option ended up inside the builder's Host block:\n%s", cfg)
	}
}
