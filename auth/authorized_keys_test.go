package auth

import (
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"
)

func newPub(t *testing.T) gossh.PublicKey {
	t.Helper()
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	p, err := gossh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestParseAuthorizedKeys(t *testing.T) {
	k1, k2, k3, k4, k5 := newPub(t), newPub(t), newPub(t), newPub(t), newPub(t)
	line := func(k gossh.PublicKey) string { return AuthorizedKeyLine(k) }
	text := strings.Join([]string{
		"# comment",
		"",
		line(k1) + " nix builder key",
		"no-port-forwarding,no-agent-forwarding,no-X11-forwarding " + line(k2),
		`command="rm -rf /" ` + line(k3),
		"garbage line",
		`frobnicate ` + line(k4),
		"   " + line(k5) + "   ",
	}, "\n")
	ak := ParseAuthorizedKeys([]byte(text))
	for _, k := range []gossh.PublicKey{k1, k2, k3, k5} {
		if ak.Lookup(k) == nil {
			t.Errorf("key %s not accepted", gossh.FingerprintSHA256(k))
		}
	}
	if ak.Lookup(k4) != nil {
		t.Errorf("key with an unknown option accepted (must fail closed)")
	}
	if e := ak.Lookup(k3); e == nil || e.Options.Command == nil || *e.Options.Command != "rm -rf /" {
		t.Errorf("command= not parsed: %+v", e)
	}
	if e := ak.Lookup(k1); e == nil || e.Comment != "nix builder key" || e.Line != 3 {
		t.Errorf("entry %+v", e)
	}
	if ak.Len() != 4 {
		t.Errorf("Len %d, want 4", ak.Len())
	}
	lines := map[int]bool{}
	for _, r := range ak.Rejected {
		lines[r.Line] = true
	}
	for _, n := range []int{6, 7} {
		if !lines[n] {
			t.Errorf("line %d not reported as rejected: %+v", n, ak.Rejected)
		}
	}
	if ak.Lookup(newPub(t)) != nil {
		t.Error("unknown key accepted")
	}
}

func TestLoadAuthorizedKeys(t *testing.T) {
	dir := t.TempDir()
	if _, err := LoadAuthorizedKeys(filepath.Join(dir, "missing")); err == nil {
		t.Error("missing file loaded")
	}
	empty := filepath.Join(dir, "empty")
	os.WriteFile(empty, []byte("# nothing\n"), 0o644)
	if _, err := LoadAuthorizedKeys(empty); err == nil || !strings.Contains(err.Error(), "no usable key") {
		t.Errorf("empty file: %v", err)
	}
	k := newPub(t)
	single := filepath.Join(dir, "key.pub")
	os.WriteFile(single, []byte(AuthorizedKeyLine(k)+" root@host\n"), 0o644)
	ak, err := LoadAuthorizedKeys(single)
	if err != nil || ak.Lookup(k) == nil {
		t.Errorf("single .pub file: %v", err)
	}
}

// TestMatchFirstAllowingLine: a key on several lines logs in with the
// first line whose from= and expiry-time allow it, as sshd does; later
// lines never override it.
func TestMatchFirstAllowingLine(t *testing.T) {
	k, other := newPub(t), newPub(t)
	line := AuthorizedKeyLine(k)
	local, remote := fakeAddr("127.0.0.1:5000"), fakeAddr("10.1.2.3:5000")
	now := time.Date(2030, 6, 1, 12, 0, 0, 0, time.Local)
	for _, c := range []struct {
		name   string
		lines  []string
		remote net.Addr
		line   int    // the line Match must use; 0 for none
		reason string // Match's reason when line is 0
	}{
		{"command= first, then plain", []string{`command="echo forced" ` + line, line}, local, 1, ""},
		{"plain first, then command=", []string{line, `command="echo forced" ` + line}, local, 1, ""},
		{"from= refuses the first", []string{`from="10.0.0.0/8",command="first" ` + line, line}, local, 2, ""},
		{"from= allows the first", []string{`from="10.0.0.0/8",command="first" ` + line, line}, remote, 1, ""},
		{"first expired", []string{`expiry-time="20200101",command="first" ` + line, line}, local, 2, ""},
		{"first not yet expired", []string{`expiry-time="20991231",command="first" ` + line, line}, local, 1, ""},
		{"rejected line skipped", []string{`frobnicate ` + line, `command="second" ` + line}, local, 2, ""},
		{"other key's line skipped", []string{AuthorizedKeyLine(other), `command="mine" ` + line}, local, 2, ""},
		{"all refuse, last expired", []string{`from="10.0.0.0/8" ` + line, `expiry-time="20200101" ` + line}, local, 0,
			"key expired (expiry-time, line 2)"},
		{"all refuse, last from=", []string{`expiry-time="20200101" ` + line, `from="10.0.0.0/8" ` + line}, local, 0,
			"address not allowed by from= (line 2)"},
		{"key absent", []string{AuthorizedKeyLine(other)}, local, 0, "key not authorized"},
	} {
		ak := ParseAuthorizedKeys([]byte(strings.Join(c.lines, "\n") + "\n"))
		e, reason := ak.Match(k, c.remote, now)
		switch {
		case c.line == 0 && (e != nil || reason != c.reason):
			t.Errorf("%s: Match = %s, %q; want nil, %q", c.name, entryString(e), reason, c.reason)
		case c.line != 0 && (e == nil || e.Line != c.line || reason != ""):
			t.Errorf("%s: Match = %s, %q; want line %d", c.name, entryString(e), reason, c.line)
		}
	}
}

// TestMatchForcedCommandKept: a plain line after a command= line for the
// same key does not remove the forced command.
func TestMatchForcedCommandKept(t *testing.T) {
	k := newPub(t)
	ak := ParseAuthorizedKeys([]byte(`command="nix-store --serve",environment="NIX_REMOTE=daemon" ` +
		AuthorizedKeyLine(k) + "\n" + AuthorizedKeyLine(k) + "\n"))
	e, reason := ak.Match(k, fakeAddr("127.0.0.1:22"), time.Now())
	if e == nil || e.Options.Command == nil || *e.Options.Command != "nix-store --serve" ||
		len(e.Options.Environment) != 1 {
		t.Fatalf("Match = %s, %q; want the command= line", entryString(e), reason)
	}
	if l := ak.Lookup(k); l != e {
		t.Errorf("Lookup = %s, want the first line", entryString(l))
	}
	if ak.Len() != 1 {
		t.Errorf("Len %d, want 1 (one key on two lines)", ak.Len())
	}
}

// entryString names an entry by its line and forced command, for errors.
func entryString(e *AuthorizedKey) string {
	switch {
	case e == nil:
		return "nil"
	case e.Options.Command != nil:
		return fmt.Sprintf("line %d (command=%q)", e.Line, *e.Options.Command)
	}
	return fmt.Sprintf("line %d", e.Line)
}
