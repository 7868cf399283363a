package darlingexec

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseNixSetting(t *testing.T) {
	for in, want := range map[string]NixSetting{
		"extra-platforms=x86_64-darwin":              {"extra-platforms", "x86_64-darwin"},
		" substituters = ":                           {"substituters", ""},
		"extra-substituters=https://a https://b":     {"extra-substituters", "https://a https://b"},
		"min-free=2147483648":                        {"min-free", "2147483648"},
		"connect_timeout=5":                          {"connect_timeout", "5"},
		"extra-experimental-features=ca-derivations": {"extra-experimental-features", "ca-derivations"},
		"post-build-hook=/bin/x=y":                   {"post-build-hook", "/bin/x=y"},
	} {
		got, err := ParseNixSetting(in)
		if err != nil || got != want {
			t.Errorf("ParseNixSetting(%q) = %+v, %v; want %+v", in, got, err, want)
		}
	}
	for in, wantErr := range map[string]string{
		"extra-platforms":            "want KEY=VALUE",
		"=x":                         "empty setting name",
		"1abc=x":                     "want a letter",
		"-abc=x":                     "want a letter",
		"a b=x":                      "want a letter",
		"a.b=x":                      "want a letter",
		"!include=x":                 "want a letter",
		"include=/etc/other.conf":    "include is nix.conf's directive",
		"k=a\nmax-jobs = 99":         "value of k: a line break cannot be written in nix.conf",
		"k=a\rb":                     "a line break cannot be written",
		"k=a\x00b":                   "a NUL byte cannot be written",
		"k=https://a#frag":           "'#' starts a comment in nix.conf",
		"max-jobs=8":                 "init sets max-jobs itself: use --max-jobs",
		"extra-max-jobs=8":           "use --max-jobs",
		"system-features=kvm":        "init sets system-features itself: use --system-features",
		"extra-system-features=kvm":  "use --system-features",
		"sandbox=true":               "init sets sandbox itself",
		"build-users-group=nixbld":   "init sets build-users-group itself",
		"experimental-features=flak": "extra-experimental-features",
		"trusted-users=alice":        "extra-trusted-users",
	} {
		_, err := ParseNixSetting(in)
		if err == nil || !strings.Contains(err.Error(), wantErr) {
			t.Errorf("ParseNixSetting(%q): %v; want an error with %q", in, err, wantErr)
		}
	}
}

// TestNixConf: --nix-conf settings come after init's own, in the order
// given, and min-free or max-free replace init's defaults.
func TestNixConf(t *testing.T) {
	conf := NixConf(InitOptions{MaxJobs: 2, SystemFeatures: []string{"big-parallel"}, NixConf: []NixSetting{
		{"substituters", ""}, {"max-free", "8589934592"}, {"extra-platforms", "x86_64-darwin"},
	}})
	_, body, _ := strings.Cut(conf, "\n# darling-sshd-managed sha256=")
	_, body, _ = strings.Cut(body, "\n")
	want := "build-users-group =\nsandbox = false\nexperimental-features = nix-command flakes\ntrusted-users = root\n" +
		"max-jobs = 2\nsystem-features = big-parallel\nmin-free = 1073741824\n" +
		"substituters =\nmax-free = 8589934592\nextra-platforms = x86_64-darwin\n"
	if body != want {
		t.Errorf("body:\n%s\nwant:\n%s", body, want)
	}
	if !managedUnedited(conf) {
		t.Error("NixConf's own text is taken for a hand edit")
	}
	if managedUnedited(conf+"extra-platforms = x86_64-darwin\n") || managedUnedited(strings.Replace(conf, "max-jobs = 2", "max-jobs = 3", 1)) {
		t.Error("an edited body is taken for init's")
	}
}

// TestManagedOldHeader: a file the previous version of init wrote, with
// its wording of the header, is still recognised as init's, so that a
// new init rewrites it.
func TestManagedOldHeader(t *testing.T) {
	old := "# Written by darling-sshd init; edit it there, or your edit is kept only until init --force.\n" +
		"# darling-sshd-managed sha256=a6cd2ac73d18775d66b8562e9dd47a7c315835709f5755de58d1aed08b53c957\n" +
		"build-users-group =\nsandbox = false\nexperimental-features = nix-command flakes\ntrusted-users = root\n" +
		"max-jobs = 4\nmin-free = 1073741824\nmax-free = 4294967296\n"
	if !managedUnedited(old) {
		t.Error("the previous version's file is taken for a hand edit")
	}
	for _, text := range []string{"", "max-jobs = 4\n", "# a comment\n", "# darling-sshd-managed sha256=00\nmax-jobs = 4\n",
		"max-jobs = 4\n# darling-sshd-managed sha256=a6cd2ac73d18775d66b8562e9dd47a7c315835709f5755de58d1aed08b53c957\n"} {
		if managedUnedited(text) {
			t.Errorf("%q taken for init's", text)
		}
	}
}

func TestLineDiff(t *testing.T) {
	for _, tc := range []struct{ name, a, b, want string }{
		{"equal", "a\nb\n", "a\nb\n", ""},
		{"added at the end", "a\nb\n", "a\nb\nc\n", "@@ -1,2 +1,3 @@\n a\n b\n+c\n"},
		{"removed", "a\nb\nc\n", "a\nc\n", "@@ -1,3 +1,2 @@\n a\n-b\n c\n"},
		{"changed", "a\nb\nc\n", "a\nB\nc\n", "@@ -1,3 +1,3 @@\n a\n-b\n+B\n c\n"},
		{"from nothing", "", "a\n", "@@ -0,0 +1,1 @@\n+a\n"},
		{"to nothing", "a\n", "", "@@ -1,1 +0,0 @@\n-a\n"},
		{"no newline at the end", "a\nb", "a\nb\n", "@@ -1,2 +1,2 @@\n a\n-b\n\\ No newline at end of file\n+b\n"},
		{"two hunks", "1\n2\n3\n4\n5\n6\n7\n8\n9\n10\n11\n12\n", "0\n1\n2\n3\n4\n5\n6\n7\n8\n9\n10\n11\n12\n13\n",
			"@@ -1,3 +1,4 @@\n+0\n 1\n 2\n 3\n@@ -10,3 +11,4 @@\n 10\n 11\n 12\n+13\n"},
		{"changes 6 kept lines apart share a hunk", "x\n1\n2\n3\n4\n5\n6\ny\n", "X\n1\n2\n3\n4\n5\n6\nY\n",
			"@@ -1,8 +1,8 @@\n-x\n+X\n 1\n 2\n 3\n 4\n 5\n 6\n-y\n+Y\n"},
	} {
		got := lineDiff("A", "B", tc.a, tc.b)
		if tc.want != "" {
			tc.want = "--- A\n+++ B\n" + tc.want
		}
		if got != tc.want {
			t.Errorf("%s:\n got %q\nwant %q", tc.name, got, tc.want)
		}
	}
}

// TestLineDiffAgreesWithDiff: on files with scattered changes, applying
// lineDiff's output with patch(1) turns a into b.
func TestLineDiffAgreesWithDiff(t *testing.T) {
	patch, err := exec.LookPath("patch")
	if err != nil {
		t.Skip("no patch(1)")
	}
	var a, b strings.Builder
	for i := range 200 {
		line := fmt.Sprintf("line %d\n", i)
		switch {
		case i%17 == 0:
			b.WriteString("new " + line)
		case i%23 == 0:
			a.WriteString(line)
			continue
		case i%31 == 0:
			a.WriteString(line)
			b.WriteString(line + "inserted\n")
			continue
		default:
			b.WriteString(line)
		}
		a.WriteString(line)
	}
	dir := t.TempDir()
	f := filepath.Join(dir, "f")
	if err := os.WriteFile(f, []byte(a.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(patch, "-s", f)
	cmd.Stdin = strings.NewReader(lineDiff("f", "f", a.String(), b.String()))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("patch: %v\n%s", err, out)
	}
	if got, _ := os.ReadFile(f); string(got) != b.String() {
		t.Errorf("patched file differs from b")
	}
}

// TestLineDiffBounded: beyond maxDiffCells the lines that differ are
// shown removed and added, without filling a table that big.
func TestLineDiffBounded(t *testing.T) {
	var a, b strings.Builder
	a.WriteString("same\n")
	b.WriteString("same\n")
	for i := range 1100 {
		fmt.Fprintf(&a, "a%d\n", i)
		fmt.Fprintf(&b, "b%d\n", i)
	}
	d := lineDiff("A", "B", a.String(), b.String())
	if !strings.HasPrefix(d, "--- A\n+++ B\n@@ -1,1101 +1,1101 @@\n same\n-a0\n-a1\n") || !strings.Contains(d, "-a1099\n+b0\n") || !strings.HasSuffix(d, "+b1099\n") {
		t.Errorf("bounded diff:\n%.300s…", d)
	}
}
