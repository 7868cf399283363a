package integration

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/darling-sshd/darling-sshd/darlingexec"
)

// nixEval evaluates a Nix expression offline and returns the string it
// yields.
func nixEval(t *testing.T, expr string) string {
	t.Helper()
	var s string
	nixEvalInto(t, expr, &s)
	return s
}

// nixEvalInto evaluates a Nix expression offline into v, from its JSON.
func nixEvalInto(t *testing.T, expr string, v any) {
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
	if err := json.Unmarshal(out, v); err != nil {
		t.Fatalf("nix-instantiate output %s: %v", out, err)
	}
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
	for _, tc := range []struct {
		o     darlingexec.InitOptions
		extra string // lib.nixConf's extraNixConf, as the module passes it
	}{
		{darlingexec.InitOptions{MaxJobs: 4}, `{ }`},
		{darlingexec.InitOptions{MaxJobs: 2, SystemFeatures: []string{"big-parallel", "benchmark"}}, `{ }`},
		{darlingexec.InitOptions{MaxJobs: 3, NixConf: []darlingexec.NixSetting{
			{Key: "extra-platforms", Value: "x86_64-darwin"}, {Key: "extra-trusted-public-keys", Value: "a:1 b:2"},
			{Key: "keep-going", Value: "true"}, {Key: "max-free", Value: "8589934592"}, {Key: "substituters", Value: ""},
		}}, `{ substituters = [ ]; extra-platforms = " x86_64-darwin "; max-free = 8589934592; keep-going = true;
			extra-trusted-public-keys = [ "a:1" "b:2" ]; }`},
	} {
		o := tc.o
		feats := `[ ]`
		if len(o.SystemFeatures) > 0 {
			feats = `[ "` + strings.Join(o.SystemFeatures, `" "`) + `" ]`
		}
		got := nixEval(t, "(import ./nix/lib.nix).nixConf { maxJobs = "+strconv.Itoa(o.MaxJobs)+"; systemFeatures = "+feats+"; extraNixConf = "+tc.extra+"; }")
		if want := darlingexec.NixConf(o); got != want {
			t.Errorf("lib.nixConf %+v:\n got %q\nwant %q", o, got, want)
		}
		// The module passes extraNixConf to init as --nix-conf values,
		// in the order NixConf writes them.
		var args []string
		nixEvalInto(t, "(import ./nix/lib.nix).nixConfSettings "+tc.extra, &args)
		var settings []darlingexec.NixSetting
		for _, a := range args {
			s, err := darlingexec.ParseNixSetting(a)
			if err != nil {
				t.Errorf("lib.nixConfSettings gives %q: %v", a, err)
			}
			settings = append(settings, s)
		}
		if !slices.Equal(settings, o.NixConf) {
			t.Errorf("lib.nixConfSettings %s: %q, want %v", tc.extra, args, o.NixConf)
		}
	}
}

// TestNixLibInitCommand: the module's ExecStartPre, split as systemd
// splits it and run on a stand-in prefix, writes the nix.conf lib.nix
// says it writes, values with spaces, '$', '%' and quotes included.
func TestNixLibInitCommand(t *testing.T) {
	prefix := tempPrefix(t)
	args := `maxJobs = 3; systemFeatures = [ "kvm" ]; extraNixConf = {
		extra-substituters = [ "https://a.example/x%20y" "https://b.example/$HOME" ];
		post-build-hook = "/bin/hook \"quoted\" back\\slash";
		substituters = [ ];
	};`
	line := nixEval(t, `(import ./nix/lib.nix).initCommand { package = "/pkg"; prefix = "`+prefix+`"; darling = "`+bins.standin+`"; `+args+` }`)
	argv := systemdSplit(t, line)
	if argv[0] != "/pkg/bin/darling-sshd" {
		t.Fatalf("ExecStartPre %q", argv)
	}
	cmd := exec.Command(bins.server, argv[1:]...)
	cmd.Env = []string{"HOME=/root", "PATH=/usr/bin:/bin", noRaceExitSleep}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%q: %v\n%s", argv, err, out)
	}
	got, err := os.ReadFile(prefixView(t, prefix, "etc/nix/nix.conf"))
	if err != nil {
		t.Fatal(err)
	}
	want := nixEval(t, `(import ./nix/lib.nix).nixConf { `+args+` }`)
	if string(got) != want {
		t.Errorf("init wrote:\n%s\nlib.nixConf:\n%s", got, want)
	}
	if !strings.Contains(want, "extra-substituters = https://a.example/x%20y https://b.example/$HOME\n") ||
		!strings.Contains(want, "post-build-hook = /bin/hook \"quoted\" back\\slash\n") {
		t.Errorf("lib.nixConf:\n%s", want)
	}
}

// systemdSplit splits an Exec line as systemd does, as far as lib.nix
// writes them: words separated by spaces, a word may be in double quotes,
// C escapes \\ and \" read in and out of quotes, "$$" and "%%" stand for
// '$' and '%'. A lone '$' or '%', which systemd would expand, fails the
// test.
func systemdSplit(t *testing.T, line string) []string {
	t.Helper()
	var words []string
	for i := 0; i < len(line); {
		if line[i] == ' ' {
			i++
			continue
		}
		quoted := line[i] == '"'
		if quoted {
			i++
		}
		var w strings.Builder
		for ; i < len(line); i++ {
			c := line[i]
			if quoted && c == '"' {
				i++
				break
			}
			if !quoted && c == ' ' {
				break
			}
			switch c {
			case '\\':
				i++
				if i == len(line) || line[i] != '\\' && line[i] != '"' {
					t.Fatalf("unexpected escape in %q", line)
				}
				c = line[i]
			case '$', '%':
				if i+1 == len(line) || line[i+1] != c {
					t.Fatalf("systemd would expand %q in %q", line[i:], line)
				}
				i++
			}
			w.WriteByte(c)
		}
		words = append(words, w.String())
	}
	return words
}

// TestNixInstallScript: lib.installNixScript, run in a stand-in prefix on
// a tarball laid out as Nix's binary tarball is (install with nix= and
// cacert=, .reginfo, store/), copies the store paths read-only, loads
// the registration and installs Nix and the CA bundle into the default
// profile. The tarball's nix-store and nix-env are stubs that record
// their calls: this checks the script's steps, not Nix on Darling.
func TestNixInstallScript(t *testing.T) {
	src := t.TempDir()
	dir := filepath.Join(src, "nix-9.9-x86_64-darwin")
	nixPath, cacert := "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-nix-9.9", "/nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-nss-cacert"
	stub := "#!/bin/sh\necho \"$(basename \"$0\") $*\" >> /private/tmp/install-calls\n[ \"$1\" != --load-db ] || cat >> /private/tmp/install-calls\n"
	for path, body := range map[string]string{
		"install":  "#!/bin/sh\n\nset -e\n\ndest=\"/nix\"\nnix=\"" + nixPath + "\"\ncacert=\"" + cacert + "\"\necho 'the installer was run' >&2\nexit 1\n",
		".reginfo": "registration\n",
		"store/" + filepath.Base(nixPath) + "/bin/nix-store":              stub,
		"store/" + filepath.Base(nixPath) + "/bin/nix-env":                stub,
		"store/" + filepath.Base(cacert) + "/etc/ssl/certs/ca-bundle.crt": "certs\n",
	} {
		p := filepath.Join(dir, path)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	tarball := filepath.Join(src, "nix.tar.xz")
	run(t, "tar", "-C", src, "-cJf", tarball, filepath.Base(dir))
	script := nixEval(t, `(import ./nix/lib.nix).installNixScript { version = "9.9"; url = "file:///Volumes/SystemRoot`+tarball+`"; }`)
	if out, err := exec.Command("sh", "-n", "-c", script).CombinedOutput(); err != nil {
		t.Fatalf("sh -n: %v\n%s", err, out)
	}
	prefix := tempPrefix(t)
	// Cold-started with no output to hold: a container keeps its first
	// caller's stdio (Darling #1510).
	if err := standin(prefix, "shell", "true").Run(); err != nil {
		t.Fatal(err)
	}
	for range 2 { // a second run finds the paths there and copies nothing
		if out, err := standin(prefix, "shell", "/bin/sh", "-c", script).CombinedOutput(); err != nil {
			t.Fatalf("the install script: %v\n%s", err, out)
		}
	}
	calls, _ := os.ReadFile(prefixView(t, prefix, "private/tmp/install-calls"))
	want := "nix-store --load-db\nregistration\nnix-env -p /nix/var/nix/profiles/default -i " + nixPath + " " + cacert + "\n"
	if string(calls) != want+want {
		t.Errorf("calls:\n%s\nwant twice:\n%s", calls, want)
	}
	for _, p := range []string{nixPath + "/bin/nix-store", cacert + "/etc/ssl/certs/ca-bundle.crt"} {
		st, err := os.Stat(prefixView(t, prefix, p[1:]))
		if err != nil || st.Mode().Perm()&0o222 != 0 {
			t.Errorf("%s: %v %v", p, st, err)
		}
	}
	if ents, _ := os.ReadDir(prefixView(t, prefix, "nix/store")); len(ents) != 2 {
		t.Errorf("/nix/store holds %v", ents)
	}
	if _, err := os.Stat(prefixView(t, prefix, "private/tmp/"+filepath.Base(dir))); err == nil {
		t.Error("the unpacked tarball was left behind")
	}
}

// acceptsFlags runs a generated command line with -h appended: it exits 0
// only if every flag before it is one the binary knows, with a valid value.
func acceptsFlags(t *testing.T, cmdline string) {
	t.Helper()
	f := systemdSplit(t, cmdline)
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
	// ExecStart's arguments are quoted for systemd, as ExecStartPre's.
	line := nixEval(t, `(import ./nix/lib.nix).execStart { package = "/pkg"; darling = "/run/wrappers/bin/darling"; prefix = "/var/lib/darling-builder/a b%"; }`)
	if argv := systemdSplit(t, line); !slices.Contains(argv, "/var/lib/darling-builder/a b%") {
		t.Errorf("ExecStart %s: split as %q", line, argv)
	}
	acceptsFlags(t, line)
	acceptsFlags(t, nixEval(t, `(import ./nix/lib.nix).initCommand { package = "/pkg"; darling = "/run/wrappers/bin/darling"; systemFeatures = ["a" "b"]; shareStore = true;
		extraNixConf = { extra-platforms = "x86_64-darwin"; extra-substituters = [ "https://a" "https://b" ]; }; }`))
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
