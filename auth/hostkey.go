// Package auth holds the server's keys: its host key (loaded or generated),
// the authorized keys of its users, and the lines that let clients trust
// the host key. It knows keys and files, nothing of processes.
package auth

import (
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	gossh "golang.org/x/crypto/ssh"
)

// LoadOrGenerateHostKey loads the host key at path, or generates an ed25519
// key there if none exists, so the key stays the same across restarts. A key
// file that group or others can read is refused, as sshd refuses it.
func LoadOrGenerateHostKey(path string) (gossh.Signer, error) {
	signer, err := LoadHostKey(path)
	if err == nil || !errors.Is(err, fs.ErrNotExist) {
		return signer, err
	}
	if err := GenerateHostKey(path); err != nil {
		return nil, err
	}
	return LoadHostKey(path)
}

// LoadHostKey loads the private ed25519 host key at path. Like sshd, it
// refuses a key file that is not its owner's alone.
func LoadHostKey(path string) (gossh.Signer, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("load host key %s: %w", path, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("load host key %s: %w", path, err)
	}
	if perm := st.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("load host key %s: permissions %04o are too open: it must not be readable by group or others (chmod 600 %s)", path, perm, path)
	}
	if sys, ok := st.Sys().(*syscall.Stat_t); ok && int(sys.Uid) != os.Geteuid() {
		return nil, fmt.Errorf("load host key %s: owned by uid %d, not by the server's uid %d", path, sys.Uid, os.Geteuid())
	}
	b, err := io.ReadAll(io.LimitReader(f, 1<<20))
	if err != nil {
		return nil, fmt.Errorf("load host key %s: %w", path, err)
	}
	signer, err := gossh.ParsePrivateKey(b)
	if err != nil {
		return nil, fmt.Errorf("load host key %s: %w", path, err)
	}
	if t := signer.PublicKey().Type(); t != gossh.KeyAlgoED25519 {
		return nil, fmt.Errorf("load host key %s: %s key; darling-sshd uses an ed25519 host key", path, t)
	}
	return signer, nil
}

// GenerateHostKey writes a new ed25519 host key to path atomically: a temp
// file in the same folder, fsync, rename, fsync of the folder. The file is
// mode 0600; a missing parent is created with mode 0700. On failure no
// partial file is left.
func GenerateHostKey(path string) error {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return fmt.Errorf("generate host key %s: %w", path, err)
	}
	block, err := gossh.MarshalPrivateKey(priv, "darling-sshd host key")
	if err != nil {
		return fmt.Errorf("generate host key %s: %w", path, err)
	}
	if err := writeFileAtomic(path, pem.EncodeToMemory(block), 0o600); err != nil {
		return fmt.Errorf("write host key %s: %w", path, err)
	}
	return writePublicKey(path, priv.Public())
}

// writePublicKey writes the .pub file beside a host key, as ssh-keygen
// does, so tools can read the public key without the private one.
func writePublicKey(path string, pub crypto.PublicKey) error {
	sshPub, err := gossh.NewPublicKey(pub)
	if err != nil {
		return fmt.Errorf("host key %s: %w", path, err)
	}
	if err := writeFileAtomic(path+".pub", []byte(AuthorizedKeyLine(sshPub)+"\n"), 0o644); err != nil {
		return fmt.Errorf("write public host key %s.pub: %w", path, err)
	}
	return nil
}

// LoadPublicHostKey reads the public host key from path.pub, or from the
// private key at path when there is no .pub. It never generates a key.
func LoadPublicHostKey(path string) (gossh.PublicKey, error) {
	if b, err := os.ReadFile(path + ".pub"); err == nil {
		pub, _, _, _, err := gossh.ParseAuthorizedKey(b)
		if err != nil {
			return nil, fmt.Errorf("load public host key %s.pub: %w", path, err)
		}
		return pub, nil
	}
	s, err := LoadHostKey(path)
	if err != nil {
		return nil, err
	}
	return s.PublicKey(), nil
}

// writeFileAtomic writes data to path through a temp file and a rename.
func writeFileAtomic(path string, data []byte, mode os.FileMode) (err error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if err = f.Chmod(mode); err != nil {
		return err
	}
	if _, err = f.Write(data); err != nil {
		return err
	}
	if err = f.Sync(); err != nil {
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	if err = os.Rename(f.Name(), path); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// AuthorizedKeyLine is the public key as one OpenSSH line, without newline.
func AuthorizedKeyLine(pub gossh.PublicKey) string {
	return strings.TrimSpace(string(gossh.MarshalAuthorizedKey(pub)))
}

// PublicHostKeyBase64 is the public key line base64-encoded, as Nix's
// publicHostKey (nix.buildMachines, /etc/nix/machines) wants it.
func PublicHostKeyBase64(pub gossh.PublicKey) string {
	return base64.StdEncoding.EncodeToString([]byte(AuthorizedKeyLine(pub) + "\n"))
}
