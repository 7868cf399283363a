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
	"strconv"
	"strings"
	"testing"
	"time"
)

// nixClient is the host side: real Nix with a store of its own under the
// test's temp folder, reaching the server through ssh -F.
type nixClient struct {
	t     *testing.T
	s     *server
	dir   string
	store string // a chroot store: <store>/nix/store
}

// setupNix prepares the stand-in prefix as a Darling builder would be: its
// own store, extra-platforms x86_64-darwin (test only: Linux Nix builds
// the "darwin" derivation with /bin/sh), and profile nix-store and
// nix-daemon wrappers that record their use, so Nix is provably found in
// the prefix's profile first.
func setupNix(t *testing.T, s *server) *nixClient {
	t.Helper()
	if _, err := exec.LookPath("nix-store"); err != nil {
		t.Fatal("nix-store not found: make test installs nix-bin")
	}
	conf := "build-users-group =\nsandbox = false\nextra-platforms = x86_64-darwin\nsubstituters =\nexperimental-features = nix-command\n"
	profile := s.inPrefix("nix/var/nix/profiles/default/bin")
	for path, body := range map[string]string{
		s.inPrefix("etc/nix/nix.conf"):       conf,
		filepath.Join(profile, "nix-store"):  "#!/bin/sh\necho \"nix-store $*\" >> /private/tmp/profile-used\nexec /usr/bin/nix-store \"$@\"\n",
		filepath.Join(profile, "nix-daemon"): "#!/bin/sh\necho \"nix-daemon $*\" >> /private/tmp/profile-used\nexec /usr/bin/nix-daemon \"$@\"\n",
	} {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(body), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	dir := filepath.Join(s.dir, "client")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return &nixClient{t: t, s: s, dir: dir, store: filepath.Join(dir, "store")}
}

// profileUsed returns what the profile wrappers recorded.
func (c *nixClient) profileUsed() string {
	b, _ := os.ReadFile(c.s.inPrefix("private/tmp/profile-used"))
	return string(b)
}

// cmd returns a nix command of the client's.
func (c *nixClient) cmd(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, name, args...)
	env := []string{
		"PATH=" + os.Getenv("PATH"),
		"HOME=" + c.dir,
		"XDG_CACHE_HOME=" + filepath.Join(c.dir, "cache"),
		"NIX_SSHOPTS=-F " + c.s.sshConfig,
		"NIX_CONFIG=build-users-group =\nsandbox = false\nsubstituters =\nexperimental-features = nix-command\n",
	}
	cmd.Env = env
	return cmd
}

func (c *nixClient) run(name string, args ...string) string {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	out, err := c.cmd(ctx, name, args...).CombinedOutput()
	if err != nil {
		c.t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func TestNixStorePing(t *testing.T) {
	s := startServer(t, serverOpt{})
	c := setupNix(t, s)
	for _, proto := range []string{"ssh", "ssh-ng"} {
		out := c.run("nix", "store", "ping", "--store", proto+"://dut")
		if !strings.Contains(out, "Store URL: "+proto+"://dut") {
			t.Errorf("%s ping: %s", proto, out)
		}
	}
	used := c.profileUsed()
	if !strings.Contains(used, "nix-store --serve --write") || !strings.Contains(used, "nix-daemon --stdio") {
		t.Errorf("Nix did not come from the prefix's profile; the wrappers recorded %q", used)
	}
}

// TestNixCopy copies a path holding a 100 MiB file to the builder and back
// with each protocol, compared byte for byte.
func TestNixCopy(t *testing.T) {
	s := startServer(t, serverOpt{})
	c := setupNix(t, s)
	for i, proto := range []string{"ssh", "ssh-ng"} {
		src := filepath.Join(c.dir, "payload-"+proto)
		if err := os.MkdirAll(src, 0o755); err != nil {
			t.Fatal(err)
		}
		f, err := os.Create(filepath.Join(src, "big"))
		if err != nil {
			t.Fatal(err)
		}
		h := sha256.New()
		if _, err := io.Copy(io.MultiWriter(f, h), io.LimitReader(rand.NewChaCha8([32]byte{byte(i), 7}), 100<<20)); err != nil {
			t.Fatal(err)
		}
		f.Close()
		want := hex.EncodeToString(h.Sum(nil))
		path := strings.TrimSpace(c.run("nix-store", "--store", c.store, "--add", src))

		c.run("nix", "copy", "--no-check-sigs", "--store", c.store, "--to", proto+"://dut", path)
		if r := s.exec("sha256sum "+path+"/big", ""); !strings.HasPrefix(r.stdout, want) {
			t.Errorf("%s: on the builder %q, want %s", proto, r.stdout, want)
		}

		back := filepath.Join(c.dir, "back-"+proto)
		c.run("nix", "copy", "--no-check-sigs", "--store", back, "--from", proto+"://dut", path)
		b, err := os.Open(filepath.Join(back, path, "big"))
		if err != nil {
			t.Fatal(err)
		}
		h.Reset()
		io.Copy(h, b)
		b.Close()
		if got := hex.EncodeToString(h.Sum(nil)); got != want {
			t.Errorf("%s: copied back %s, want %s", proto, got, want)
		}
	}
}

// darwinDrv writes a derivation for x86_64-darwin whose builder runs script.
func (c *nixClient) darwinDrv(name, script string) string {
	p := filepath.Join(c.dir, name+".nix")
	expr := fmt.Sprintf(`derivation { name = %q; system = "x86_64-darwin"; builder = "/bin/sh"; args = [ "-c" %q ]; }`, name, script)
	if err := os.WriteFile(p, []byte(expr), 0o644); err != nil {
		c.t.Fatal(err)
	}
	return p
}

// builders returns --builders naming the server, from machines-line.
func (c *nixClient) builders(proto string) string {
	c.t.Helper()
	cmd := exec.Command(bins.server, "machines-line", "--host-alias", "dut", "--protocol", proto,
		"--identity", c.s.clientKey, "--host-key", c.s.hostKey, "--max-jobs", "1")
	cmd.Env = []string{noRaceExitSleep}
	out, err := cmd.Output()
	if err != nil {
		c.t.Fatalf("machines-line: %v", err)
	}
	return strings.TrimSpace(string(out))
}

// TestNixRemoteBuild builds an x86_64-darwin derivation as users do, with
// --max-jobs 0 and --builders naming the server: the log reaches the
// client and the result lands in the client's store.
func TestNixRemoteBuild(t *testing.T) {
	s := startServer(t, serverOpt{})
	c := setupNix(t, s)
	for _, proto := range []string{"ssh", "ssh-ng"} {
		tag := fmt.Sprintf("%s-%d", proto, rand.IntN(1e9))
		drv := c.darwinDrv("darwin-"+tag, "echo building "+tag+" on the builder >&2; echo result "+tag+" > $out")
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		cmd := c.cmd(ctx, "nix-build", drv, "--store", c.store, "--no-out-link", "--max-jobs", "0",
			"--builders", c.builders(proto))
		var stderr strings.Builder
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		cancel()
		if err != nil {
			t.Fatalf("%s: nix-build: %v\n%s", proto, err, stderr.String())
		}
		if !strings.Contains(stderr.String(), "building "+tag+" on the builder") {
			t.Errorf("%s: the build log did not reach the client:\n%s", proto, stderr.String())
		}
		result := strings.TrimSpace(string(out))
		b, err := os.ReadFile(filepath.Join(c.store, result))
		if err != nil || string(b) != "result "+tag+"\n" {
			t.Errorf("%s: result %s in the client's store: %q %v", proto, result, b, err)
		}
	}
}

// procsInPrefix returns live processes chrooted in prefix whose command
// line contains sub.
func procsInPrefix(prefix, sub string) []string {
	var found []string
	for _, pid := range procsMatching(func(cl string) bool { return strings.Contains(cl, sub) }) {
		name := strconv.Itoa(pid)
		if root, err := os.Readlink("/proc/" + name + "/root"); err == nil && root == prefix {
			cl, _ := os.ReadFile("/proc/" + name + "/cmdline")
			found = append(found, name+":"+strings.ReplaceAll(string(cl), "\x00", " "))
		}
	}
	return found
}

// TestNixBuildCancelled: Nix cancels a remote build by SIGKILLing its ssh;
// the remote nix-store and the builder's processes must end.
func TestNixBuildCancelled(t *testing.T) {
	s := startServer(t, serverOpt{})
	c := setupNix(t, s)
	d := uniqueSleep()
	drv := c.darwinDrv("sleeper-"+d, "echo sleeping >&2; /bin/sleep "+d+"; echo done > $out")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	build := c.cmd(ctx, "nix-build", drv, "--store", c.store, "--no-out-link", "--max-jobs", "0",
		"--builders", c.builders("ssh"))
	if err := build.Start(); err != nil {
		t.Fatal(err)
	}
	defer build.Wait()
	if !waitFor(2*time.Minute, func() bool { return len(procsWithArgs("/bin/sleep", d)) == 1 }) {
		t.Fatal("the remote builder never started")
	}
	// The ssh that nix-build (its build hook) runs for this server.
	sshPids := procsMatching(func(cl string) bool {
		return strings.HasPrefix(cl, "ssh\x00") && strings.Contains(cl, c.s.sshConfig) && strings.Contains(cl, "nix-store --serve --write")
	})
	if len(sshPids) == 0 {
		t.Fatal("found no ssh process of the build")
	}
	for _, p := range sshPids {
		if err := killPid(p); err != nil {
			t.Fatal(err)
		}
	}
	gone := func() bool {
		return len(procsWithArgs("/bin/sleep", d)) == 0 && len(procsInPrefix(s.prefix, "--serve")) == 0
	}
	if !waitFor(killGrace+5*time.Second, gone) {
		t.Errorf("after the client's ssh was killed, still running: builder %v, remote %v",
			procsWithArgs("/bin/sleep", d), procsInPrefix(s.prefix, "--serve"))
	}
	cancel()
}
