package integration

import (
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// runInit runs `darling-sshd init` on a stand-in prefix.
func runInit(t *testing.T, prefix string, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(bins.server, append([]string{"init", "--prefix", prefix, "--darling", bins.standin}, args...)...)
	cmd.Env = []string{"HOME=/root", "PATH=/usr/bin:/bin", noRaceExitSleep}
	out, _ := cmd.CombinedOutput()
	return string(out), cmd.ProcessState.ExitCode()
}

// TestInit prepares a prefix through the launcher, idempotently, and
// leaves a managed file a person edited alone unless forced.
func TestInit(t *testing.T) {
	prefix := tempPrefix(t)
	out, code := runInit(t, prefix, "--system-features", "big-parallel,benchmark", "--max-jobs", "2")
	if code != 0 || !strings.Contains(out, "/etc/nix/nix.conf: written") || !strings.Contains(out, "/var/empty: created") {
		t.Fatalf("first init: exit %d\n%s", code, out)
	}
	conf, _ := os.ReadFile(prefixView(t, prefix, "etc/nix/nix.conf"))
	for _, l := range []string{"build-users-group =\n", "sandbox = false\n", "experimental-features = nix-command flakes\n",
		"trusted-users = root\n", "max-jobs = 2\n", "system-features = big-parallel benchmark\n", "min-free = ", "max-free = "} {
		if !strings.Contains(string(conf), l) {
			t.Errorf("nix.conf lacks %q:\n%s", l, conf)
		}
	}
	if st, err := os.Stat(prefixView(t, prefix, "var/empty")); err != nil || st.Mode().Perm() != 0o555 {
		t.Errorf("/var/empty: %v %v", st, err)
	}
	out, code = runInit(t, prefix, "--system-features", "big-parallel,benchmark", "--max-jobs", "2")
	if code != 0 || !strings.Contains(out, "nix.conf: unchanged") || !strings.Contains(out, "/var/empty: unchanged") {
		t.Errorf("second init changed something: exit %d\n%s", code, out)
	}
	// Sharing the store links /nix, only when asked.
	if target, err := os.Readlink(prefixView(t, prefix, "nix")); err == nil {
		t.Errorf("/nix linked without --share-store: %s", target)
	}
	out, code = runInit(t, prefix, "--share-store")
	if target, _ := os.Readlink(prefixView(t, prefix, "nix")); code != 0 || target != "/Volumes/SystemRoot/nix" {
		t.Errorf("--share-store: exit %d, /nix -> %q\n%s", code, target, out)
	}
}

// readConf returns the prefix's nix.conf as its processes see it.
func readConf(t *testing.T, prefix string) string {
	t.Helper()
	b, err := os.ReadFile(prefixView(t, prefix, "etc/nix/nix.conf"))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestInitNixConf: --nix-conf settings land after init's own, in the
// order given, and a change of init's flags rewrites its own file.
func TestInitNixConf(t *testing.T) {
	prefix := tempPrefix(t)
	out, code := runInit(t, prefix, "--nix-conf", "extra-platforms=x86_64-darwin", "--nix-conf", "substituters =",
		"--nix-conf", "extra-trusted-public-keys = k:AAAA k2:BBBB", "--nix-conf", "min-free=2147483648")
	if code != 0 || !strings.Contains(out, "/etc/nix/nix.conf: written") {
		t.Fatalf("init --nix-conf: exit %d\n%s", code, out)
	}
	if conf := readConf(t, prefix); !strings.HasSuffix(conf, "max-jobs = 4\nmax-free = 4294967296\n"+
		"extra-platforms = x86_64-darwin\nsubstituters =\nextra-trusted-public-keys = k:AAAA k2:BBBB\nmin-free = 2147483648\n") ||
		strings.Contains(conf, "min-free = 1073741824") {
		t.Errorf("nix.conf:\n%s", conf)
	}
	for _, args := range [][]string{
		{"--nix-conf", "extra-platforms=x86_64-darwin"},
		{"--nix-conf", "extra-platforms=x86_64-darwin", "--system-features", "big-parallel"},
		{"--nix-conf", "extra-platforms=x86_64-darwin", "--system-features", "big-parallel", "--max-jobs", "1"},
		{"--system-features", "big-parallel", "--max-jobs", "1"},
	} {
		out, code := runInit(t, prefix, args...)
		if code != 0 || !strings.Contains(out, "/etc/nix/nix.conf: written\n") {
			t.Errorf("init %v after other flags: exit %d\n%s", args, code, out)
		}
	}
	if conf := readConf(t, prefix); !strings.HasSuffix(conf, "max-jobs = 1\nsystem-features = big-parallel\nmin-free = 1073741824\nmax-free = 4294967296\n") {
		t.Errorf("nix.conf after the flags changed:\n%s", conf)
	}
}

// TestInitOldManagedFile: the file the previous version of init wrote,
// with that version's header, is taken for init's own and rewritten.
func TestInitOldManagedFile(t *testing.T) {
	prefix := tempPrefix(t)
	if _, code := runInit(t, prefix); code != 0 {
		t.Fatal("first init failed")
	}
	old := "# Written by darling-sshd init; edit it there, or your edit is kept only until init --force.\n" +
		"# darling-sshd-managed sha256=a6cd2ac73d18775d66b8562e9dd47a7c315835709f5755de58d1aed08b53c957\n" +
		"build-users-group =\nsandbox = false\nexperimental-features = nix-command flakes\ntrusted-users = root\n" +
		"max-jobs = 4\nmin-free = 1073741824\nmax-free = 4294967296\n"
	if err := os.WriteFile(prefixView(t, prefix, "etc/nix/nix.conf"), []byte(old), 0o644); err != nil {
		t.Fatal(err)
	}
	out, code := runInit(t, prefix, "--nix-conf", "extra-platforms=x86_64-darwin")
	if conf := readConf(t, prefix); code != 0 || !strings.Contains(out, "/etc/nix/nix.conf: written\n") || !strings.HasSuffix(conf, "extra-platforms = x86_64-darwin\n") {
		t.Errorf("init over the previous version's file: exit %d\n%s\n%s", code, out, conf)
	}
}

// TestInitHandEdit: a managed file a person edited is kept, init shows
// what it would change and fails, until --force.
func TestInitHandEdit(t *testing.T) {
	prefix := tempPrefix(t)
	if out, code := runInit(t, prefix, "--max-jobs", "2"); code != 0 {
		t.Fatalf("first init: exit %d\n%s", code, out)
	}
	edited := strings.Replace(readConf(t, prefix), "max-jobs = 2\n", "max-jobs = 2\nextra-platforms = x86_64-darwin\n", 1)
	if err := os.WriteFile(prefixView(t, prefix, "etc/nix/nix.conf"), []byte(edited), 0o644); err != nil {
		t.Fatal(err)
	}
	out, code := runInit(t, prefix, "--max-jobs", "3")
	for _, want := range []string{
		"/etc/nix/nix.conf: edited by hand; left alone",
		"--- /etc/nix/nix.conf (in the prefix, as it is)\n+++ /etc/nix/nix.conf (as init would write it)\n@@ ",
		"\n-max-jobs = 2\n-extra-platforms = x86_64-darwin\n+max-jobs = 3\n min-free = ",
		"init --force overwrites it",
		"/var/empty: unchanged", // the other steps still ran
		"darling-sshd init: /etc/nix/nix.conf in the prefix: edited by hand; left alone (init --force overwrites it)\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("init over an edited file lacks %q: exit %d\n%s", want, code, out)
		}
	}
	if code != 1 {
		t.Errorf("init over an edited file: exit %d, want 1", code)
	}
	if conf := readConf(t, prefix); conf != edited {
		t.Errorf("the edited file was changed:\n%s", conf)
	}
	// Even with init's flags unchanged, the edit is reported.
	if out, code := runInit(t, prefix, "--max-jobs", "2"); code != 1 || !strings.Contains(out, "-extra-platforms = x86_64-darwin\n") {
		t.Errorf("init with the first flags over an edited file: exit %d\n%s", code, out)
	}
	out, code = runInit(t, prefix, "--max-jobs", "3", "--force")
	if conf := readConf(t, prefix); code != 0 || !strings.Contains(out, "written over a hand edit (--force)") ||
		!strings.Contains(conf, "max-jobs = 3\n") || strings.Contains(conf, "extra-platforms") {
		t.Errorf("init --force: exit %d\n%s\n%s", code, out, conf)
	}
	if out, code := runInit(t, prefix, "--max-jobs", "3"); code != 0 || !strings.Contains(out, "nix.conf: unchanged") {
		t.Errorf("init after --force: exit %d\n%s", code, out)
	}
	// A nix.conf init did not write (no header) is a person's too.
	os.WriteFile(prefixView(t, prefix, "etc/nix/nix.conf"), []byte("sandbox = false\n"), 0o644)
	if out, code := runInit(t, prefix, "--max-jobs", "3"); code != 1 || !strings.Contains(out, "\n sandbox = false\n") {
		t.Errorf("init over a foreign nix.conf: exit %d\n%s", code, out)
	}
}

// TestInitNixConfRefused: a --nix-conf init cannot write as asked is a
// usage error, one line pointing to -h, before anything runs.
func TestInitNixConfRefused(t *testing.T) {
	prefix := tempPrefix(t)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--nix-conf", "extra-platforms"}, "want KEY=VALUE"},
		{[]string{"--nix-conf", "bad key=1"}, "want a letter, then letters, digits"},
		{[]string{"--nix-conf", "k=a\nmax-jobs = 99"}, "a line break cannot be written in nix.conf"},
		{[]string{"--nix-conf", "k=https://x#y"}, "'#' starts a comment"},
		{[]string{"--nix-conf", "max-jobs=8"}, "init sets max-jobs itself: use --max-jobs"},
		{[]string{"--nix-conf", "system-features=kvm"}, "init sets system-features itself: use --system-features"},
		{[]string{"--nix-conf", "sandbox=true"}, "init sets sandbox itself"},
		{[]string{"--nix-conf", "include=/x"}, "include is nix.conf's directive"},
		{[]string{"--nix-conf", "substituters=", "--nix-conf", "substituters=https://a"}, "substituters given twice"},
	} {
		out, code := runInit(t, prefix, tc.args...)
		if code != 2 || strings.Count(out, "\n") != 1 || !strings.Contains(out, "invalid value") || !strings.Contains(out, tc.want) ||
			!strings.HasSuffix(out, "; see darling-sshd init -h\n") {
			t.Errorf("init %q: exit %d\n%s", tc.args, code, out)
		}
	}
	if _, err := os.Stat(prefix); err == nil {
		t.Error("a refused init created the prefix")
	}
}

// TestInitPrefixBuilds: with init's nix.conf, the prefix's Nix builds an
// x86_64-darwin derivation as root. The stand-in's is Linux's Nix (the
// host's, through its /usr), so it needs extra-platforms, as `make run`
// passes it; without, it refuses the derivation's system.
func TestInitPrefixBuilds(t *testing.T) {
	if _, err := exec.LookPath("nix-build"); err != nil {
		t.Fatal("nix-build not found: make test installs nix-bin")
	}
	prefix := tempPrefix(t)
	build := func() (string, error) {
		expr := `derivation { name = "init-builds"; system = "x86_64-darwin"; builder = "/bin/sh"; args = [ "-c" "echo built > $out" ]; }`
		out, err := standin(prefix, "shell", "nix-build", "--no-out-link", "-E", expr).CombinedOutput()
		return string(out), err
	}
	if out, code := runInit(t, prefix, "--nix-conf", "substituters="); code != 0 {
		t.Fatalf("init: exit %d\n%s", code, out)
	}
	if out, err := build(); err == nil || !strings.Contains(out, "x86_64-darwin") {
		t.Errorf("a Linux Nix built an x86_64-darwin derivation without extra-platforms: %v\n%s", err, out)
	}
	if out, code := runInit(t, prefix, "--nix-conf", "substituters=", "--nix-conf", "extra-platforms=x86_64-darwin"); code != 0 {
		t.Fatalf("init: exit %d\n%s", code, out)
	}
	out, err := build()
	path := strings.TrimSpace(out[strings.LastIndex(strings.TrimSpace(out), "\n")+1:])
	if err != nil || !strings.HasPrefix(path, "/nix/store/") {
		t.Fatalf("build in the prefix: %v\n%s", err, out)
	}
	if b, err := os.ReadFile(prefixView(t, prefix, path[1:])); err != nil || string(b) != "built\n" {
		t.Errorf("%s: %q %v", path, b, err)
	}
}

// TestInitStopContainer: with --stop-container, init stops a container it
// cold-started for its own commands, and leaves one it found running.
func TestInitStopContainer(t *testing.T) {
	prefix := tempPrefix(t)
	out, code := runInit(t, prefix, "--stop-container")
	if code != 0 || !strings.Contains(out, "container: stopped (init had started it)") {
		t.Errorf("init --stop-container on a cold prefix: exit %d\n%s", code, out)
	}
	// Gone, not a zombie, which the launcher would take for a container.
	if pid := containerPidOf(prefix); pid != 0 && !waitFor(10*time.Second, func() bool {
		_, err := os.Stat("/proc/" + strconv.Itoa(pid))
		return err != nil
	}) {
		t.Errorf("the container init started, %d, still runs", pid)
	}
	if err := standin(prefix, "shell", "true").Run(); err != nil {
		t.Fatal(err)
	}
	pid := containerPidOf(prefix)
	out, code = runInit(t, prefix, "--stop-container")
	if code != 0 || !strings.Contains(out, "container: left running (init did not start it)") || !alive(pid) {
		t.Errorf("init --stop-container on a running container: exit %d, pid %d alive %v\n%s", code, pid, alive(pid), out)
	}
}

// TestPrefixChecked: a prefix Darling would fail on obscurely is refused
// up front with the reason.
func TestPrefixChecked(t *testing.T) {
	long := "/tmp/" + strings.Repeat("x", 90)
	out, code := runInit(t, long)
	if code == 0 || !strings.Contains(out, "Darling's socket path allows at most") {
		t.Errorf("a long prefix: exit %d %s", code, out)
	}
	out, code = runInit(t, "relative/prefix")
	if code == 0 || !strings.Contains(out, "absolute") {
		t.Errorf("a relative prefix: exit %d %s", code, out)
	}
	other := t.TempDir()
	os.Chown(other, 12345, 12345)
	out, code = runInit(t, other)
	if code == 0 || !strings.Contains(out, "owned by uid 12345") {
		t.Errorf("a prefix of another user: exit %d %s", code, out)
	}
}

// TestInitReportsFailure: a step that fails inside the prefix is reported
// with its status and what it wrote to stderr, never as "<nil>".
func TestInitReportsFailure(t *testing.T) {
	prefix := tempPrefix(t)
	launcher := launcherScript(t, `case "$*" in *nix.conf.tmp*) echo "no room for nix.conf" >&2; exit 3;; esac
exec "$STANDIN" "$@"`)
	out, code := runInit(t, prefix, "--darling", launcher)
	if code != 1 || !strings.Contains(out, "write /etc/nix/nix.conf in the prefix: exit status 3: no room for nix.conf") || strings.Contains(out, "<nil>") {
		t.Errorf("init with a failing step: exit %d\n%s", code, out)
	}
}
