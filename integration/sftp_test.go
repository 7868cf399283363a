package integration

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// sftpBatch runs the real sftp client in batch mode; each command line
// must succeed unless it starts with "-".
func (s *server) sftpBatch(t *testing.T, script string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "sftp", "-F", s.sshConfig, "-b", "-", "dut")
	cmd.Stdin = strings.NewReader(script)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// inPrefix returns a path of the prefix as its processes see it.
func (s *server) inPrefix(p string) string { return prefixView(s.t, s.prefix, p) }

// TestSFTPBatch: put, get, ls, mkdir, rename, rm, symlink and chmod with
// the real sftp client, starting in the user's home.
func TestSFTPBatch(t *testing.T) {
	s := startServer(t, serverOpt{})
	local := filepath.Join(s.dir, "local.txt")
	os.WriteFile(local, []byte("payload\n"), 0o640)
	back := filepath.Join(s.dir, "back.txt")
	out, err := s.sftpBatch(t, fmt.Sprintf(`pwd
put %s up.txt
ls -l up.txt
mkdir dir
rename up.txt dir/moved.txt
symlink dir/moved.txt link
chmod 600 dir/moved.txt
get link %s
put %s gone.txt
rm gone.txt
mkdir empty
rmdir empty
`, local, back, local))
	if err != nil {
		t.Fatalf("sftp: %v\n%s", err, out)
	}
	if !strings.Contains(out, "Remote working directory: /Users/root") {
		t.Errorf("did not start in the home:\n%s", out)
	}
	if b, _ := os.ReadFile(back); string(b) != "payload\n" {
		t.Errorf("get through the symlink: %q", b)
	}
	r := s.exec(`cd ~ && stat -c '%a %u' dir/moved.txt && readlink link && ls | grep -v '^LinuxHome$'`, "")
	if r.stdout != fmt.Sprintf("600 %d\ndir/moved.txt\ndir\nlink\n", os.Getuid()) {
		t.Errorf("the prefix after the batch: %q", r.stdout)
	}
}

// TestSFTPModes: files are created with the modes the client asked for.
func TestSFTPModes(t *testing.T) {
	s := startServer(t, serverOpt{})
	local := filepath.Join(s.dir, "exe")
	os.WriteFile(local, []byte("#!/bin/sh\n"), 0o751)
	if out, err := s.sftpBatch(t, "put -p "+local+" exe\nmkdir d\n"); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	if r := s.exec("stat -c %a ~/exe", ""); r.stdout != "751\n" {
		t.Errorf("mode %q, want 751", r.stdout)
	}
}

// TestSFTPEscapes tries ways out of the prefix; every one must fail or
// land inside it, and an absolute symlink inside must work.
func TestSFTPEscapes(t *testing.T) {
	s := startServer(t, serverOpt{})
	secret := filepath.Join(s.dir, "secret")
	os.WriteFile(secret, []byte("host secret"), 0o644)
	// The stand-in prefix lives at <dir>/p, so "../secret" from the
	// prefix's root names the host file.
	r := s.exec(`cd ~ && ln -s `+secret+` abs-out && ln -s ../../../secret rel-out && ln -s / rootlink &&
mkdir -p /nix/var/nix/profiles/default/bin && echo nix > /nix/var/nix/profiles/default/bin/nix-store &&
ln -s /nix/var/nix/profiles/default .nix-profile`, "")
	if r.code != 0 {
		t.Fatalf("setup: %+v", r)
	}
	got := filepath.Join(s.dir, "got")
	cases := []struct{ name, cmd string }{
		{"dot-dot from root", "get /../secret " + got},
		{"dot-dot relative", "get ../../../secret " + got},
		{"host absolute path", "get " + secret + " " + got},
		{"absolute symlink pointing out", "get abs-out " + got},
		{"relative symlink pointing out", "get rel-out " + got},
		{"through a symlink to /", "get rootlink/../secret " + got},
		{"proc magic link", "get /proc/self/root" + secret + " " + got},
		{"proc of the container's init", "get /proc/1/root" + secret + " " + got},
		{"symlink made over SFTP, relative", "symlink ../../../secret made-rel\nget made-rel " + got},
		{"symlink made over SFTP, absolute", "symlink " + secret + " made-abs\nget made-abs " + got},
		{"host root under /Volumes/SystemRoot", "get /Volumes/SystemRoot" + secret + " " + got},
	}
	for _, c := range cases {
		os.Remove(got)
		out, _ := s.sftpBatch(t, c.cmd+"\n")
		if b, err := os.ReadFile(got); err == nil {
			t.Errorf("%s: read %q out of the prefix\n%s", c.name, b, out)
		}
	}
	// Writes that try to leave land inside, or fail.
	local := filepath.Join(s.dir, "local")
	os.WriteFile(local, []byte("x"), 0o644)
	s.sftpBatch(t, "put "+local+" ../../../planted\nmkdir ../../../planted-dir\nrename "+
		"/Users/root/abs-out ../../../renamed\nchmod 777 abs-out\nsymlink / ../../../linked\n")
	for _, name := range []string{"planted", "planted-dir", "renamed", "linked"} {
		if _, err := os.Lstat(filepath.Join(s.dir, name)); err == nil {
			t.Errorf("%s was created outside the prefix", name)
		}
	}
	if st, _ := os.Stat(secret); st.Mode().Perm() != 0o644 {
		t.Errorf("chmod through a symlink changed the host file: %v", st.Mode())
	}
	if _, err := os.Stat(s.inPrefix("planted")); err != nil {
		t.Errorf("a put to ../../../planted should land at the prefix's root: %v", err)
	}
	// An absolute symlink inside the prefix (the Nix profile) works.
	os.Remove(got)
	if out, err := s.sftpBatch(t, "get .nix-profile/bin/nix-store "+got+"\n"); err != nil {
		t.Errorf("absolute symlink inside: %v %s", err, out)
	} else if b, _ := os.ReadFile(got); string(b) != "nix\n" {
		t.Errorf("through ~/.nix-profile: %q", b)
	}
}

// TestSFTPNames: `ls -l` shows owners by the names the prefix's own
// passwd and group give them (gid 0 is the prefix's wheel, not the host's
// root), and the number for an id neither names.
func TestSFTPNames(t *testing.T) {
	s := startServer(t, serverOpt{})
	r := s.exec(`echo 'prefixuser:*:4242:4343:Prefix User:/var/empty:/usr/bin/false' >> /etc/passwd &&
echo 'prefixgrp:*:4343:' >> /etc/group &&
touch /by-root /by-prefixuser /by-nobody && chown 4242:4343 /by-prefixuser && chown 4545:4646 /by-nobody`, "")
	if r.code != 0 {
		t.Fatalf("setup: %+v", r)
	}
	out, err := s.sftpBatch(t, "ls -l /\n")
	if err != nil {
		t.Fatalf("sftp: %v\n%s", err, out)
	}
	owners := map[string]string{}
	for line := range strings.Lines(out) {
		if f := strings.Fields(line); len(f) >= 9 && strings.HasPrefix(f[8], "by-") {
			owners[f[8]] = f[2] + ":" + f[3]
		}
	}
	want := map[string]string{"by-root": "root:wheel", "by-prefixuser": "prefixuser:prefixgrp", "by-nobody": "4545:4646"}
	for name, w := range want {
		if owners[name] != w {
			t.Errorf("%s: owner %q, want %q\n%s", name, owners[name], w, out)
		}
	}
}

// TestUnknownSubsystem is refused as sshd refuses it.
func TestUnknownSubsystem(t *testing.T) {
	s := startServer(t, serverOpt{})
	c := s.dialGo(t)
	sess, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	if err := sess.RequestSubsystem("frobnicate"); err == nil {
		t.Error("unknown subsystem accepted")
	}
}

// TestSFTPColdContainer: SFTP warms a container that died; a launcher
// that cannot warm it fails the request with its reason.
func TestSFTPColdContainer(t *testing.T) {
	dir := t.TempDir()
	broken := filepath.Join(dir, "broken")
	launcher := filepath.Join(dir, "darling")
	script := "#!/bin/sh\nif [ -e " + broken + " ]; then echo 'darling: prefix is broken' >&2; exit 1; fi\nexec " + bins.standin + " \"$@\"\n"
	os.WriteFile(launcher, []byte(script), 0o755)
	s := startServer(t, serverOpt{args: []string{"--darling", launcher}})
	shutdownStandin(s.prefix)
	if out, err := s.sftpBatch(t, "ls /\n"); err != nil || !strings.Contains(out, "Users") {
		t.Errorf("sftp after the container died: %v %s", err, out)
	}
	shutdownStandin(s.prefix)
	os.WriteFile(broken, nil, 0o644)
	// The reason goes to the client's stderr too, but OpenSSH's sftp
	// exits on the failed request before it prints what came with it.
	out, err := s.sftpBatch(t, "ls /\n")
	if err == nil || !strings.Contains(out, "subsystem request failed") {
		t.Errorf("sftp with a launcher that cannot warm: %v\n%s", err, out)
	}
	if !s.logged(`msg="sftp not started"`) || !s.logged("prefix is broken") {
		t.Errorf("the reason was not logged")
	}
}

// roundTrip sends 256 MiB up with up and back with down, compared by
// SHA-256.
func roundTrip(t *testing.T, s *server, name string, up, down func(local, remote string) *exec.Cmd) {
	const size = 256 << 20
	src := filepath.Join(s.dir, name+".src")
	f, err := os.Create(src)
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	io.Copy(io.MultiWriter(f, h), io.LimitReader(rand.NewChaCha8([32]byte{9, byte(len(name))}), size))
	f.Close()
	want := hex.EncodeToString(h.Sum(nil))
	remote := name + ".remote"
	if out, err := up(src, remote).CombinedOutput(); err != nil {
		t.Fatalf("%s up: %v %s", name, err, out)
	}
	if r := s.exec("sha256sum ~/"+remote, ""); !strings.HasPrefix(r.stdout, want) {
		t.Errorf("%s: remote copy %q, want %s", name, r.stdout, want)
	}
	dst := filepath.Join(s.dir, name+".back")
	if out, err := down(dst, remote).CombinedOutput(); err != nil {
		t.Fatalf("%s down: %v %s", name, err, out)
	}
	g, err := os.Open(dst)
	if err != nil {
		t.Fatal(err)
	}
	h.Reset()
	io.Copy(h, g)
	g.Close()
	if got := hex.EncodeToString(h.Sum(nil)); got != want {
		t.Errorf("%s: copied back %s, want %s", name, got, want)
	}
	os.Remove(src)
	os.Remove(dst)
	s.exec("rm -f ~/"+remote, "")
}

// TestSCPAndRsync: scp (SFTP mode and the legacy protocol) and rsync move
// 256 MiB each way intact.
func TestSCPAndRsync(t *testing.T) {
	s := startServer(t, serverOpt{})
	scp := func(extra ...string) (func(l, r string) *exec.Cmd, func(l, r string) *exec.Cmd) {
		return func(l, r string) *exec.Cmd {
				return exec.Command("scp", append(append([]string{"-F", s.sshConfig}, extra...), l, "dut:"+r)...)
			}, func(l, r string) *exec.Cmd {
				return exec.Command("scp", append(append([]string{"-F", s.sshConfig}, extra...), "dut:"+r, l)...)
			}
	}
	up, down := scp()
	roundTrip(t, s, "scp", up, down)
	up, down = scp("-O")
	roundTrip(t, s, "scp-legacy", up, down)
	rsh := "ssh -F " + s.sshConfig
	roundTrip(t, s, "rsync",
		func(l, r string) *exec.Cmd { return exec.Command("rsync", "-e", rsh, l, "dut:"+r) },
		func(l, r string) *exec.Cmd { return exec.Command("rsync", "-e", rsh, "dut:"+r, l) })
}
