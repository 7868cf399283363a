package main

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestUsageErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		flag string
	}{
		{[]string{"serve", "--bogus"}, "bogus"},
		{[]string{"serve", "--kill-grace", "soon"}, "kill-grace"},
		{[]string{"serve", "--prefix-style", "weird"}, "prefix-style"},
		{[]string{"serve", "--log-level", "loud"}, "log-level"},
		{[]string{"serve", "--warm-timeout", "0s"}, "warm-timeout"},
		{[]string{"serve", "--allow-users", ","}, "allow-users"},
		{[]string{"hostkey", "--format", "pem"}, "format"},
		{[]string{"frobnicate"}, "frobnicate"},
		{[]string{"ssh-config", "--no-public-host-key"}, "no-public-host-key"},
		{[]string{"machines-line", "--listen", "x:1"}, "listen"},
		{[]string{"check", "extra"}, "extra"},
	} {
		var out, errb bytes.Buffer
		code := run(tc.args, &out, &errb)
		lines := strings.Split(strings.TrimRight(errb.String(), "\n"), "\n")
		if code != 2 || len(lines) != 1 || !strings.Contains(lines[0], tc.flag) {
			t.Errorf("%q: exit %d, stderr %q; want exit 2 and one line naming %s", tc.args, code, errb.String(), tc.flag)
		}
		if !strings.HasSuffix(lines[0], "see darling-sshd "+tc.args[0]+" -h") && !strings.HasSuffix(lines[0], "see darling-sshd -h") {
			t.Errorf("%q: %q does not end by saying where the flags are listed", tc.args, lines[0])
		}
	}
}

func TestHelp(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run([]string{"serve", "-h"}, &out, &errb); code != 0 {
		t.Errorf("serve -h: exit %d", code)
	}
	for _, f := range []string{"listen", "prefix", "darling", "prefix-style", "host-key", "authorized-keys", "allow-users", "kill-grace", "warm-timeout", "log-level", "version"} {
		if !strings.Contains(out.String(), "-"+f) {
			t.Errorf("serve -h does not list --%s", f)
		}
	}
}

func TestHostkeyCommand(t *testing.T) {
	path := filepath.Join(t.TempDir(), "hk")
	var a, b, errb bytes.Buffer
	if code := run([]string{"hostkey", "--host-key", path}, &a, &errb); code != 0 || !strings.HasPrefix(a.String(), "ssh-ed25519 ") {
		t.Fatalf("hostkey: exit %d %q %q", code, a.String(), errb.String())
	}
	if code := run([]string{"hostkey", "--host-key", path, "--format", "base64"}, &b, &errb); code != 0 {
		t.Fatalf("hostkey base64: exit %d", code)
	}
	var again bytes.Buffer
	run([]string{"hostkey", "--host-key", path}, &again, &errb)
	if again.String() != a.String() {
		t.Error("hostkey printed a different key the second time")
	}
}

// TestVersion: every subcommand, and the command alone, take --version.
func TestVersion(t *testing.T) {
	for _, args := range [][]string{{"--version"}, {"version"}} {
		var out, errb bytes.Buffer
		if code := run(args, &out, &errb); code != 0 || !strings.HasPrefix(out.String(), "darling-sshd ") {
			t.Errorf("%q: exit %d %q %q", args, code, out.String(), errb.String())
		}
	}
	for _, c := range commands() {
		var out, errb bytes.Buffer
		if code := run([]string{c.name, "--version"}, &out, &errb); code != 0 || !strings.HasPrefix(out.String(), "darling-sshd ") {
			t.Errorf("%s --version: exit %d %q %q", c.name, code, out.String(), errb.String())
		}
	}
}

// readmeUsage is the README's usage block: the top-level help and each
// subcommand's -h, as the binary prints them.
func readmeUsage() string {
	var b strings.Builder
	b.WriteString("```\n$ darling-sshd -h\n" + usage())
	for _, c := range commands() {
		fs := flag.NewFlagSet(c.name, flag.ContinueOnError)
		c.setup(fs)
		fs.Bool("version", false, "print the version and exit")
		b.WriteString("\n$ darling-sshd " + c.name + " -h\n" + c.help(fs))
	}
	return b.String() + "```\n"
}

// TestREADMEUsage: the README's usage block is what the binary prints.
// UPDATE_README=1 go test ./cmd/darling-sshd -run TestREADMEUsage
// rewrites it.
func TestREADMEUsage(t *testing.T) {
	const begin, end = "<!-- usage: begin (generated: UPDATE_README=1 go test ./cmd/darling-sshd -run TestREADMEUsage) -->\n", "<!-- usage: end -->\n"
	path := filepath.Join("..", "..", "README.md")
	readme, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	before, rest, ok1 := strings.Cut(string(readme), begin)
	have, after, ok2 := strings.Cut(rest, end)
	if !ok1 || !ok2 {
		t.Fatalf("README.md has no usage block between %q and %q", begin, end)
	}
	want := readmeUsage()
	if have == want {
		return
	}
	if os.Getenv("UPDATE_README") == "1" {
		if err := os.WriteFile(path, []byte(before+begin+want+end+after), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	t.Errorf("README.md's usage block is out of step with the flags; run UPDATE_README=1 go test ./cmd/darling-sshd -run TestREADMEUsage")
}
