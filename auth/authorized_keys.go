package auth

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strings"

	gossh "golang.org/x/crypto/ssh"
)

// AuthorizedKey is one accepted line of an authorized_keys file.
type AuthorizedKey struct {
	Key     gossh.PublicKey
	Comment string
	Options KeyOptions
	Line    int
}

// Rejected is a line of an authorized_keys file that grants nothing, and why.
type Rejected struct {
	Line   int
	Reason string
}

// AuthorizedKeys is a parsed authorized_keys file, looked up by key.
type AuthorizedKeys struct {
	Path     string
	keys     map[string]*AuthorizedKey
	Rejected []Rejected
}

// LoadAuthorizedKeys reads an authorized_keys file (a single public key
// file such as key.pub is one too).
func LoadAuthorizedKeys(path string) (*AuthorizedKeys, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load authorized keys %s: %w", path, err)
	}
	ak := ParseAuthorizedKeys(b)
	ak.Path = path
	if len(ak.keys) == 0 {
		return nil, fmt.Errorf("load authorized keys %s: no usable key in the file", path)
	}
	return ak, nil
}

// ParseAuthorizedKeys parses authorized_keys text. Blank lines and comments
// are skipped; a line that does not parse, or carries an option this
// server does not enforce, is kept in Rejected with its line number.
func ParseAuthorizedKeys(b []byte) *AuthorizedKeys {
	ak := &AuthorizedKeys{keys: map[string]*AuthorizedKey{}}
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 0, 64*1024), 1<<20)
	n := 0
	for sc.Scan() {
		n++
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		pub, comment, opts, rest, err := gossh.ParseAuthorizedKey([]byte(line))
		if err != nil {
			ak.Rejected = append(ak.Rejected, Rejected{n, err.Error()})
			continue
		}
		if len(bytes.TrimSpace(rest)) != 0 {
			ak.Rejected = append(ak.Rejected, Rejected{n, "trailing data after the key"})
			continue
		}
		o, err := ParseOptions(opts)
		if err != nil {
			ak.Rejected = append(ak.Rejected, Rejected{n, err.Error()})
			continue
		}
		ak.keys[string(pub.Marshal())] = &AuthorizedKey{Key: pub, Comment: comment, Options: o, Line: n}
	}
	if err := sc.Err(); err != nil {
		ak.Rejected = append(ak.Rejected, Rejected{n + 1, err.Error()})
	}
	return ak
}

// Lookup returns the entry for key, or nil.
func (ak *AuthorizedKeys) Lookup(key gossh.PublicKey) *AuthorizedKey {
	return ak.keys[string(key.Marshal())]
}

// Len is the number of accepted keys.
func (ak *AuthorizedKeys) Len() int { return len(ak.keys) }
