package integration

import (
	"context"
	"fmt"
	"math/rand/v2"
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

// systemView runs commands as the root Nix daemon's side would, with the
// system's own paths, in a mount namespace of their own where /etc/ssh
// and /etc/nix are temporary folders: register writes there with its
// defaults, and ssh and Nix read there with theirs. Nothing of the
// machine's configuration changes.
type systemView struct {
	t        *testing.T
	ssh, nix string
	home     string
}

func newSystemView(t *testing.T) *systemView {
	t.Helper()
	dir := t.TempDir()
	v := &systemView{t: t, ssh: filepath.Join(dir, "etc-ssh"), nix: filepath.Join(dir, "etc-nix"), home: filepath.Join(dir, "home")}
	for _, d := range []string{filepath.Join(v.ssh, "ssh_config.d"), v.nix, v.home} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	sshConfig, err := os.ReadFile("/etc/ssh/ssh_config")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(sshConfig), "Include /etc/ssh/ssh_config.d/*.conf") {
		t.Fatalf("the system ssh_config includes no ssh_config.d:\n%s", sshConfig)
	}
	// The machine's nix.conf, with no cache to reach: these machines have
	// no network.
	nixConf, _ := os.ReadFile("/etc/nix/nix.conf")
	nixConf = append(nixConf, "\nsubstituters =\n"...)
	for path, b := range map[string][]byte{filepath.Join(v.ssh, "ssh_config"): sshConfig, filepath.Join(v.nix, "nix.conf"): nixConf} {
		if err := os.WriteFile(path, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return v
}

// cmd returns name args... run in the view, with a plain root
// environment: no NIX_SSHOPTS, no NIX_CONFIG, nothing that names the
// builder.
func (v *systemView) cmd(ctx context.Context, name string, args ...string) *exec.Cmd {
	script := `mount --make-rprivate / && mount --bind "$1" /etc/ssh && mount --bind "$2" /etc/nix && shift 2 && exec "$@"`
	cmd := exec.CommandContext(ctx, "unshare", append([]string{"--mount", "sh", "-c", script, "sh", v.ssh, v.nix, name}, args...)...)
	cmd.Env = []string{"HOME=" + v.home, "PATH=" + os.Getenv("PATH"), "USER=root", noRaceExitSleep}
	return cmd
}

func (v *systemView) run(name string, args ...string) string {
	v.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	out, err := v.cmd(ctx, name, args...).CombinedOutput()
	if err != nil {
		v.t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// TestRegisterThenNix: a server started as make run starts it, register
// with its defaults (the system's paths, temporary here), and real Nix
// then pings, copies to and builds on the builder through the
// registered alias alone: no --builders, no NIX_SSHOPTS, no ssh -F.
func TestRegisterThenNix(t *testing.T) {
	s := startServer(t, serverOpt{})
	setupNix(t, s)
	v := newSystemView(t)
	// First from the running server's state folder, then from serve's
	// flags: the same registration.
	out := v.run(bins.server, "register", "--state-dir", filepath.Join(s.dir, "state"))
	reg := []string{bins.server, "register", "--listen", s.addr, "--host-key", s.hostKey, "--identity", s.clientKey}
	for _, want := range []string{"/etc/ssh/ssh_config.d/darling-sshd-darling-builder.conf: create", "/etc/nix/machines: create",
		"/etc/ssh/darling-sshd_known_hosts: create", "now check it as Nix will use it:\n  darling-sshd check\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("register's output lacks %q:\n%s", want, out)
		}
	}
	if out := v.run(reg[0], reg[1:]...); strings.Contains(out, "create") || strings.Contains(out, "update") {
		t.Errorf("a second register changed something:\n%s", out)
	}
	machines, _ := os.ReadFile(filepath.Join(v.nix, "machines"))
	if n := strings.Count(string(machines), "ssh://root@darling-builder "); n != 1 {
		t.Errorf("machines file has %d lines for the builder:\n%s", n, machines)
	}
	if out := v.run(bins.server, "check"); strings.Count(out, "ok ") != 5 {
		t.Errorf("check:\n%s", out)
	}

	for _, proto := range []string{"ssh", "ssh-ng"} {
		out := v.run("nix", "--extra-experimental-features", "nix-command", "store", "ping", "--store", proto+"://darling-builder")
		if !strings.Contains(out, "Store URL: "+proto+"://darling-builder") {
			t.Errorf("%s ping: %s", proto, out)
		}
	}
	tag := fmt.Sprintf("%d", rand.Int64())
	src := filepath.Join(v.home, "payload")
	os.MkdirAll(src, 0o755)
	os.WriteFile(filepath.Join(src, "file"), []byte("payload "+tag+"\n"), 0o644)
	path := strings.TrimSpace(v.run("nix-store", "--add", src))
	v.run("nix", "--extra-experimental-features", "nix-command", "copy", "--no-check-sigs", "--to", "ssh://darling-builder", path)
	if r := s.exec("cat "+path+"/file", ""); r.stdout != "payload "+tag+"\n" {
		t.Errorf("copied path on the builder: %+v", r)
	}

	drv := filepath.Join(v.home, "darwin.nix")
	os.WriteFile(drv, []byte(fmt.Sprintf(`derivation { name = "registered-%s"; system = "x86_64-darwin"; builder = "/bin/sh"; args = [ "-c" "echo built %s on the builder > $out" ]; }`, tag, tag)), 0o644)
	result := strings.TrimSpace(lastLine(v.run("nix-build", "--no-out-link", drv)))
	if b, err := os.ReadFile(result); err != nil || string(b) != "built "+tag+" on the builder\n" {
		t.Errorf("remote build's result %s: %q %v", result, b, err)
	}
	if !strings.Contains(s.log.String(), "nix-store --serve --write") {
		t.Error("the server's log shows no nix-store --serve session")
	}

	v.run(reg[0], append(reg[1:], "--undo")...)
	left, _ := os.ReadDir(filepath.Join(v.ssh, "ssh_config.d"))
	machines, _ = os.ReadFile(filepath.Join(v.nix, "machines"))
	if len(left) != 0 || strings.Contains(string(machines), "darling-builder") {
		t.Errorf("after --undo: ssh_config.d %v, machines %q", left, machines)
	}
}

// lastLine is the last non-empty line of s.
func lastLine(s string) string {
	l := strings.Split(strings.TrimSpace(s), "\n")
	return l[len(l)-1]
}
