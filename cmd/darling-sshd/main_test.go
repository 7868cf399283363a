package main

import (
	"bytes"
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
	} {
		var out, errb bytes.Buffer
		code := run(tc.args, &out, &errb)
		lines := strings.Split(strings.TrimRight(errb.String(), "\n"), "\n")
		if code != 2 || len(lines) != 1 || !strings.Contains(lines[0], tc.flag) {
			t.Errorf("%q: exit %d, stderr %q; want exit 2 and one line naming %s", tc.args, code, errb.String(), tc.flag)
		}
	}
}

func TestHelp(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run([]string{"serve", "-h"}, &out, &errb); code != 0 {
		t.Errorf("serve -h: exit %d", code)
	}
	for _, f := range []string{"listen", "prefix", "darling", "prefix-style", "host-key", "authorized-keys", "allow-users", "kill-grace", "warm-timeout", "log-level"} {
		if !strings.Contains(errb.String(), "-"+f) {
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
