package integration

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"
)

// skSigner is a software stand-in for a FIDO security key holding an
// sk-ssh-ed25519@openssh.com key: it signs as the authenticator would,
// with or without the user-presence (touch) flag.
type skSigner struct {
	priv  ed25519.PrivateKey
	pub   gossh.PublicKey
	flags byte
}

func newSKSigner(t *testing.T) *skSigner {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	wire := gossh.Marshal(struct {
		Name, Key, App string
	}{gossh.KeyAlgoSKED25519, string(pub), "ssh:"})
	pk, err := gossh.ParsePublicKey(wire)
	if err != nil {
		t.Fatal(err)
	}
	return &skSigner{priv: priv, pub: pk, flags: 1}
}

func (s *skSigner) PublicKey() gossh.PublicKey { return s.pub }

func (s *skSigner) Sign(_ io.Reader, data []byte) (*gossh.Signature, error) {
	app := sha256.Sum256([]byte("ssh:"))
	msg := sha256.Sum256(data)
	fields := binary.BigEndian.AppendUint32([]byte{s.flags}, 1) // flags, counter
	signed := append(append(app[:], fields...), msg[:]...)
	return &gossh.Signature{Format: gossh.KeyAlgoSKED25519, Blob: ed25519.Sign(s.priv, signed), Rest: fields}, nil
}

// TestSecurityKeys: sk keys log in with a touch; without one only when
// their line says no-touch-required.
func TestSecurityKeys(t *testing.T) {
	touch, noTouch := newSKSigner(t), newSKSigner(t)
	dir := t.TempDir()
	ak := filepath.Join(dir, "authorized_keys")
	os.WriteFile(ak, []byte(string(gossh.MarshalAuthorizedKey(touch.pub))+
		"no-touch-required "+string(gossh.MarshalAuthorizedKey(noTouch.pub))), 0o644)
	s := startServer(t, serverOpt{args: []string{"--authorized-keys", ak}})
	login := func(signer gossh.Signer) error {
		c, err := gossh.Dial("tcp", net.JoinHostPort("127.0.0.1", s.port), &gossh.ClientConfig{
			User: "root", Auth: []gossh.AuthMethod{gossh.PublicKeys(signer)},
			HostKeyCallback: gossh.InsecureIgnoreHostKey(), Timeout: time.Minute,
		})
		if err == nil {
			c.Close()
		}
		return err
	}
	if err := login(touch); err != nil {
		t.Errorf("touched signature refused: %v", err)
	}
	touch.flags = 0
	if err := login(touch); err == nil {
		t.Error("a signature without touch logged in")
	}
	noTouch.flags = 0
	if err := login(noTouch); err != nil {
		t.Errorf("no-touch-required key without touch refused: %v", err)
	}
	// The no-touch key's permission does not carry over to the other key
	// on a later connection.
	if err := login(touch); err == nil {
		t.Error("a signature without touch logged in after a no-touch-required key")
	}
}
