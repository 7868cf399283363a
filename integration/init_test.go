package integration

import (
	"os"
	"os/exec"
	"strings"
	"testing"
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
	// A person edits the managed file: reported and kept.
	edited := string(conf) + "extra-substituters = https://example.invalid\n"
	os.WriteFile(prefixView(t, prefix, "etc/nix/nix.conf"), []byte(edited), 0o644)
	out, code = runInit(t, prefix, "--max-jobs", "3")
	if code != 0 || !strings.Contains(out, "edited by hand; left alone") {
		t.Errorf("init over an edited file: exit %d\n%s", code, out)
	}
	if b, _ := os.ReadFile(prefixView(t, prefix, "etc/nix/nix.conf")); string(b) != edited {
		t.Error("the edited file was changed")
	}
	out, code = runInit(t, prefix, "--max-jobs", "3", "--force")
	if b, _ := os.ReadFile(prefixView(t, prefix, "etc/nix/nix.conf")); code != 0 || !strings.Contains(string(b), "max-jobs = 3\n") {
		t.Errorf("init --force: exit %d\n%s\n%s", code, out, b)
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
