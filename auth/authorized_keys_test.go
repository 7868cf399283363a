package auth

import (
	"crypto/ed25519"
	"crypto/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"

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
