package auth

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

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

// AuthorizedKeys is a parsed authorized_keys file, looked up by key. A key
// may be on several lines; its entries are kept in file order.
type AuthorizedKeys struct {
	Path     string
	keys     map[string][]*AuthorizedKey
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
	ak := &AuthorizedKeys{keys: map[string][]*AuthorizedKey{}}
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
		wire := string(pub.Marshal())
		ak.keys[wire] = append(ak.keys[wire], &AuthorizedKey{Key: pub, Comment: comment, Options: o, Line: n})
	}
	if err := sc.Err(); err != nil {
		ak.Rejected = append(ak.Rejected, Rejected{n + 1, err.Error()})
	}
	return ak
}

// Lookup returns the first entry (in file order) for key, or nil. It does
// not look at from= or expiry-time: to decide a login, use Match.
func (ak *AuthorizedKeys) Lookup(key gossh.PublicKey) *AuthorizedKey {
	if e := ak.keys[string(key.Marshal())]; len(e) > 0 {
		return e[0]
	}
	return nil
}

// Match decides whether key may log in from remote at now, as sshd does:
// of the lines that carry key, in file order, the first whose expiry-time
// has not passed at now and whose from= allows remote is the entry the
// login uses, with its command=, environment= and other options; later
// lines for the same key are then ignored (a plain line after a command=
// line does not lift the forced command). Match returns that entry and "".
//
// If no line allows the login, Match returns nil and the reason the last
// line for key refused it: "key not authorized" (no line carries key),
// "key expired (expiry-time, line N)" or "address not allowed by from=
// (line N)", N being that line's number.
func (ak *AuthorizedKeys) Match(key gossh.PublicKey, remote net.Addr, now time.Time) (*AuthorizedKey, string) {
	reason := "key not authorized"
	for _, e := range ak.keys[string(key.Marshal())] {
		switch {
		case e.Options.Expired(now):
			reason = fmt.Sprintf("key expired (expiry-time, line %d)", e.Line)
		case !e.Options.FromAllows(remote):
			reason = fmt.Sprintf("address not allowed by from= (line %d)", e.Line)
		default:
			return e, ""
		}
	}
	return nil, reason
}

// Len is the number of distinct keys accepted (a key on several lines
// counts once).
func (ak *AuthorizedKeys) Len() int { return len(ak.keys) }
