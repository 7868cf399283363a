package integration

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/darling-sshd/darling-sshd/darlingexec"
)

// nixEval evaluates a Nix expression offline and returns the string it
// yields.
func nixEval(t *testing.T, expr string) string {
	t.Helper()
	cmd := exec.Command("nix-instantiate", "--eval", "--strict", "--json", "-E", expr)
	cmd.Dir = ".."
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir(), "NIX_STATE_DIR=" + t.TempDir()}
	out, err := cmd.Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		t.Fatalf("nix-instantiate %s: %v\n%s", expr, err, stderr)
	}
	var s string
	if err := json.Unmarshal(out, &s); err != nil {
		t.Fatalf("nix-instantiate output %s: %v", out, err)
	}
	return s
}

// goCLI runs the built binary and returns its stdout.
func goCLI(t *testing.T, args ...string) string {
	t.Helper()
	cmd := exec.Command(bins.server, args...)
	cmd.Env = []string{noRaceExitSleep}
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("darling-sshd %v: %v", args, err)
	}
	return string(out)
}

func TestNixFilesParse(t *testing.T) {
	files, _ := filepath.Glob("../nix/*.nix")
	files = append(files, "../flake.nix")
	if len(files) < 4 {
		t.Fatalf("nix files: %v", files)
	}
	for _, f := range files {
		if out, err := exec.Command("nix-instantiate", "--parse", f).CombinedOutput(); err != nil {
			t.Errorf("%s: %v\n%s", f, err, out)
		}
	}
}

// TestNixLibGolden keeps what the NixOS module generates identical to what
// the binary prints and writes.
func TestNixLibGolden(t *testing.T) {
	hk := filepath.Join(t.TempDir(), "hk")
	b64 := strings.TrimSpace(goCLI(t, "hostkey", "--host-key", hk, "--format", "base64"))
	for _, tc := range []struct{ nix, cli string }{
		{`machinesLine {}`, "machines-line --no-public-host-key"},
		{`machinesLine { protocol = "ssh-ng"; maxJobs = 8; speedFactor = 3; supportedFeatures = ["big-parallel" "kvm"]; mandatoryFeatures = ["darwin"]; publicHostKey = "` + b64 + `"; identity = "/k"; alias = "b2"; }`,
			"machines-line --protocol ssh-ng --max-jobs 8 --speed-factor 3 --supported-features big-parallel,kvm --mandatory-features darwin --host-key " + hk + " --identity /k --host-alias b2"},
		{`sshConfig {}`, "ssh-config"},
		{`sshConfig { alias = "b2"; port = 2200; identity = "/k"; knownHosts = "/kh"; }`,
			"ssh-config --host-alias b2 --listen 127.0.0.1:2200 --identity /k --known-hosts-out /kh"},
	} {
		got := nixEval(t, "(import ./nix/lib.nix)."+tc.nix)
		want := goCLI(t, strings.Fields(tc.cli)...)
		if got != strings.TrimSuffix(want, "\n") && got != want {
			t.Errorf("lib.%s:\n got %q\nwant %q (darling-sshd %s)", tc.nix, got, want, tc.cli)
		}
	}
	for _, o := range []darlingexec.InitOptions{{MaxJobs: 4}, {MaxJobs: 2, SystemFeatures: []string{"big-parallel", "benchmark"}}} {
		feats := `[ ]`
		if len(o.SystemFeatures) > 0 {
			feats = `[ "` + strings.Join(o.SystemFeatures, `" "`) + `" ]`
		}
		got := nixEval(t, "(import ./nix/lib.nix).nixConf { maxJobs = "+strconv.Itoa(o.MaxJobs)+"; systemFeatures = "+feats+"; }")
		if want := darlingexec.NixConf(o); got != want {
			t.Errorf("lib.nixConf %+v:\n got %q\nwant %q", o, got, want)
		}
	}
}

// acceptsFlags runs a generated command line with -h appended: it exits 0
// only if every flag before it is one the binary knows, with a valid value.
func acceptsFlags(t *testing.T, cmdline string) {
	t.Helper()
	f := strings.Fields(cmdline)
	if !strings.HasSuffix(f[0], "/darling-sshd") {
		t.Fatalf("not a darling-sshd command line: %s", cmdline)
	}
	cmd := exec.Command(bins.server, append(f[1:], "-h")...)
	cmd.Env = []string{noRaceExitSleep}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("%s: %v\n%s", cmdline, err, out)
	}
}

// TestGeneratedCommandLines: the module's ExecStartPre and ExecStart, and
// the plain unit's, use only flags the binary takes.
func TestGeneratedCommandLines(t *testing.T) {
	acceptsFlags(t, nixEval(t, `(import ./nix/lib.nix).execStart { package = "/pkg"; darling = "/run/wrappers/bin/darling"; port = 2200; }`))
	acceptsFlags(t, nixEval(t, `(import ./nix/lib.nix).initCommand { package = "/pkg"; darling = "/run/wrappers/bin/darling"; systemFeatures = ["a" "b"]; shareStore = true; }`))
	unit, err := os.ReadFile("../nix/darling-sshd.service")
	if err != nil {
		t.Fatal(err)
	}
	keys := map[string]string{}
	for _, l := range strings.Split(string(unit), "\n") {
		if k, v, ok := strings.Cut(l, "="); ok && !strings.HasPrefix(l, "#") {
			keys[k] = v
		}
	}
	for k, v := range map[string]string{"Type": "notify", "KillMode": "mixed", "Restart": "on-failure",
		"StateDirectory": "darling-sshd darling-builder", "TimeoutStopSec": "45s", "Delegate": "yes", "ProtectControlGroups": ""} {
		if keys[k] != v {
			t.Errorf("unit %s=%q, want %q", k, keys[k], v)
		}
	}
	if !strings.Contains(keys["ExecStopPost"], "darling shutdown") {
		t.Errorf("unit does not shut the prefix down after stop")
	}
	acceptsFlags(t, keys["ExecStart"])
	acceptsFlags(t, keys["ExecStartPre"])
}

// TestVendorHash: nix/package.nix's vendorHash is that of `go mod vendor`
// of the current go.mod, so the package builds with it.
func TestVendorHash(t *testing.T) {
	dir := t.TempDir()
	vendor := exec.Command("go", "mod", "vendor", "-o", filepath.Join(dir, "vendor"))
	vendor.Dir = ".."
	if out, err := vendor.CombinedOutput(); err != nil {
		t.Fatalf("go mod vendor: %v %s", err, out)
	}
	out, err := exec.Command("nix", "--extra-experimental-features", "nix-command", "hash", "path", filepath.Join(dir, "vendor")).Output()
	if err != nil {
		t.Fatal(err)
	}
	pkg, _ := os.ReadFile("../nix/package.nix")
	if want := `vendorHash = "` + strings.TrimSpace(string(out)) + `";`; !strings.Contains(string(pkg), want) {
		t.Errorf("nix/package.nix lacks %s: recompute it (README)", want)
	}
}
