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

// TestAcceptEnv: Nix's variables, the terminal and the locale pass, and so
// do names --accept-env adds; dangerous names never do, and each refusal
// is logged without ending the session.
func TestAcceptEnv(t *testing.T) {
	s := startServer(t, serverOpt{args: []string{"--accept-env", "MY_*,EXACT,LD_LIBRARY_PATH"}})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	set := "SetEnv=NIX_REMOTE=local NIX_PATH=nixpkgs=/x NIX_SSL_CERT_FILE=/c TERM=vt100 LC_TIME=C MY_A=1 EXACT=2 " +
		"LD_PRELOAD=/evil.so LD_LIBRARY_PATH=/evil DYLD_INSERT_LIBRARIES=/e PATH=/evil HOME=/evil SHELL=/evil IFS=x DPREFIX=/evil OTHER=3"
	out, err := s.ssh(ctx, "-o", set, "dut", "env").Output()
	if err != nil {
		t.Fatal(err)
	}
	env := parseEnv(out)
	for k, v := range map[string]string{"NIX_REMOTE": "local", "NIX_PATH": "nixpkgs=/x", "NIX_SSL_CERT_FILE": "/c",
		"TERM": "vt100", "LC_TIME": "C", "MY_A": "1", "EXACT": "2"} {
		if env[k] != v {
			t.Errorf("%s=%q, want %q", k, env[k], v)
		}
	}
	for _, k := range []string{"LD_PRELOAD", "LD_LIBRARY_PATH", "DYLD_INSERT_LIBRARIES", "IFS", "OTHER"} {
		if _, ok := env[k]; ok {
			t.Errorf("%s reached the command", k)
		}
	}
	for _, k := range []string{"PATH", "HOME", "SHELL", "DPREFIX"} {
		if strings.Contains(env[k], "/evil") {
			t.Errorf("%s=%q came from the client", k, env[k])
		}
	}
	for _, k := range []string{"LD_PRELOAD", "PATH", "OTHER"} {
		if !s.logged(`msg="env request refused" user=root`) || !s.logged(" name="+k+" ") {
			t.Errorf("refusal of %s not logged", k)
		}
	}
}

// TestKnownHostsOut: the known hosts file the server writes lets ssh trust
// it with no prompt, by alias and by address.
func TestKnownHostsOut(t *testing.T) {
	s := startServer(t, serverOpt{})
	kh := filepath.Join(s.dir, "known_hosts_out")
	for _, extra := range [][]string{{"-o", "HostKeyAlias=darling-builder"}, nil} {
		args := append([]string{"-F", "/dev/null", "-p", s.port, "-i", s.clientKey, "-o", "IdentitiesOnly=yes",
			"-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", "-o", "UserKnownHostsFile=" + kh,
			"-o", "GlobalKnownHostsFile=/dev/null"}, extra...)
		out, err := exec.Command("ssh", append(args, "root@127.0.0.1", "echo trusted")...).CombinedOutput()
		if err != nil || string(out) != "trusted\n" {
			t.Errorf("ssh %v with the server's known hosts: %v %s", extra, err, out)
		}
	}
}

// TestSSHConfigBlock: the ssh-config block works as is with the real ssh,
// and puts AES-GCM first.
func TestSSHConfigBlock(t *testing.T) {
	s := startServer(t, serverOpt{})
	cmd := exec.Command(bins.server, "ssh-config", "--host-alias", "darling-builder", "--identity", s.clientKey,
		"--listen", s.addr, "--known-hosts-out", filepath.Join(s.dir, "known_hosts_out"))
	cmd.Env = []string{noRaceExitSleep}
	block, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(s.dir, "generated_config")
	if err := os.WriteFile(cfg, append(block, "  BatchMode yes\n  StrictHostKeyChecking yes\n  GlobalKnownHostsFile /dev/null\n"...), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("ssh", "-v", "-F", cfg, "darling-builder", "echo via block").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "via block\n") {
		t.Fatalf("ssh with the generated block: %v\n%s\n%s", err, block, out)
	}
	if !strings.Contains(string(out), "cipher: aes128-gcm@openssh.com") {
		t.Errorf("cipher is not aes128-gcm:\n%s", out)
	}
}

