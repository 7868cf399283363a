package auth

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	gossh "golang.org/x/crypto/ssh"
)

func TestHostKeyGeneratedOnceAndKept(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	path := filepath.Join(dir, "ssh_host_ed25519_key")
	a, err := LoadOrGenerateHostKey(path)
	if err != nil {
		t.Fatal(err)
	}
	if a.PublicKey().Type() != gossh.KeyAlgoED25519 {
		t.Errorf("key type %s, want ed25519", a.PublicKey().Type())
	}
	st, err := os.Stat(path)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("key file mode %v (%v), want 0600", st.Mode(), err)
	}
	if st, err := os.Stat(dir); err != nil || st.Mode().Perm() != 0o700 {
		t.Errorf("parent mode %v (%v), want 0700", st.Mode(), err)
	}
	b, err := LoadOrGenerateHostKey(path)
	if err != nil {
		t.Fatal(err)
	}
	if string(a.PublicKey().Marshal()) != string(b.PublicKey().Marshal()) {
		t.Error("host key changed on the second load")
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 2 {
		t.Errorf("folder holds %d files, want the key and its .pub", len(ents))
	}
	pub, err := LoadPublicHostKey(path)
	if err != nil || string(pub.Marshal()) != string(a.PublicKey().Marshal()) {
		t.Errorf("public key from .pub: %v", err)
	}
	os.Remove(path + ".pub")
	if pub, err := LoadPublicHostKey(path); err != nil || string(pub.Marshal()) != string(a.PublicKey().Marshal()) {
		t.Errorf("public key without .pub: %v", err)
	}
}

func TestHostKeyReadableByOthersRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "k")
	if err := GenerateHostKey(path); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := LoadOrGenerateHostKey(path)
	if err == nil || !strings.Contains(err.Error(), "too open") {
		t.Errorf("0644 key: %v, want refusal", err)
	}
}

func TestHostKeyUnwritable(t *testing.T) {
	// A file where the folder should be: fails even for root.
	dir := t.TempDir()
	blocker := filepath.Join(dir, "notadir")
	if err := os.WriteFile(blocker, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := LoadOrGenerateHostKey(filepath.Join(blocker, "k"))
	if err == nil || !strings.Contains(err.Error(), "host key") {
		t.Errorf("unwritable: %v", err)
	}
	// The rename fails (the target is a non-empty folder): no temp file
	// is left behind.
	target := filepath.Join(dir, "k")
	if err := os.MkdirAll(filepath.Join(target, "x"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := GenerateHostKey(target); err == nil {
		t.Fatal("generate over a folder succeeded")
	}
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if strings.Contains(e.Name(), ".tmp") {
			t.Errorf("partial file %s left behind", e.Name())
		}
	}
}

func TestHostKeyGarbageRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "k")
	if err := os.WriteFile(path, []byte("not a key"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrGenerateHostKey(path); err == nil {
		t.Error("garbage key loaded")
	}
	if b, _ := os.ReadFile(path); string(b) != "not a key" {
		t.Error("an existing bad key file was overwritten")
	}
}

func TestPublicHostKeyFormats(t *testing.T) {
	path := filepath.Join(t.TempDir(), "k")
	s, err := LoadOrGenerateHostKey(path)
	if err != nil {
		t.Fatal(err)
	}
	line := AuthorizedKeyLine(s.PublicKey())
	if !strings.HasPrefix(line, "ssh-ed25519 ") || strings.Contains(line, "\n") {
		t.Errorf("line %q", line)
	}
	pub, _, _, _, err := gossh.ParseAuthorizedKey([]byte(line))
	if err != nil || string(pub.Marshal()) != string(s.PublicKey().Marshal()) {
		t.Errorf("line does not parse back: %v", err)
	}
	if b := PublicHostKeyBase64(s.PublicKey()); strings.ContainsAny(b, "\n ") {
		t.Errorf("base64 %q has whitespace", b)
	}
}
