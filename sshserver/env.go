package sshserver

import (
	"fmt"
	"path"
	"strings"

	gossh "golang.org/x/crypto/ssh"

	"github.com/darling-sshd/darling-sshd/auth"
	"github.com/darling-sshd/darling-sshd/darlingexec"
)

// DefaultAcceptEnv returns the variables a client may set: Nix's own, the
// terminal type and the locale. --accept-env adds names or globs.
func DefaultAcceptEnv() []string {
	return []string{"NIX_REMOTE", "NIX_PATH", "NIX_SSL_CERT_FILE", "TERM", "LANG", "LC_*"}
}

// deniedEnv returns what is never accepted, whatever --accept-env says:
// the dynamic loaders' variables, what decides how a shell finds and runs
// programs, the prefix, and what the server itself sets for the session.
func deniedEnv() []string {
	return []string{"LD_*", "DYLD_*", "PATH", "HOME", "SHELL", "IFS", "DPREFIX", "ENV", "BASH_ENV",
		"USER", "LOGNAME", "SSH_*", darlingexec.SessionVar}
}

// CheckEnvPattern reports whether p is a usable --accept-env name or glob.
func CheckEnvPattern(p string) error {
	if p == "" {
		return fmt.Errorf("empty name")
	}
	if _, err := path.Match(p, ""); err != nil {
		return fmt.Errorf("%q: %w", p, err)
	}
	return nil
}

func matchAny(patterns []string, name string) bool {
	for _, p := range patterns {
		if ok, _ := path.Match(p, name); ok {
			return true
		}
	}
	return false
}

// acceptEnv says whether a client may set name, and if not, why.
func acceptEnv(accept []string, name string) (bool, string) {
	switch {
	case !auth.ValidEnvName(name):
		return false, "name outside [A-Za-z0-9_]"
	case matchAny(deniedEnv(), name):
		return false, "never accepted"
	case !matchAny(accept, name):
		return false, "not in --accept-env"
	}
	return true, ""
}

// keySetsEnv reports whether the key line's environment= options (NAME=value
// pairs) set name.
func keySetsEnv(environment []string, name string) bool {
	for _, kv := range environment {
		if n, _, _ := strings.Cut(kv, "="); n == name {
			return true
		}
	}
	return false
}

// setEnv handles an "env" request. A refused variable is logged and
// reported to the client as a failed request, never fatal. Under a key
// with a forced command (command=), the client may set only the variables
// that key line's environment= also sets (whose value then wins, as it is
// applied last): a forced command such as nix-store --serve must not be
// pointed elsewhere (NIX_REMOTE, NIX_PATH) by the client.
func (se *session) setEnv(payload []byte) bool {
	var kv struct{ Name, Value string }
	if err := gossh.Unmarshal(payload, &kv); err != nil {
		se.log.Info("env request refused", "reason", "malformed request")
		return false
	}
	ok, why := acceptEnv(se.s.acceptEnv, kv.Name)
	switch {
	case se.phase != requested:
		ok, why = false, "session already started"
	case ok && se.opts.Command != nil && !keySetsEnv(se.opts.Environment, kv.Name):
		ok, why = false, "forced command: only the key's environment= names are accepted"
	case ok && strings.IndexByte(kv.Value, 0) >= 0:
		ok, why = false, "NUL in value"
	case ok && (len(se.env) >= maxEnvVars || se.envBytes+len(kv.Name)+len(kv.Value) > maxEnvBytes):
		ok, why = false, "too many or too large environment requests"
	}
	if !ok {
		se.log.Info("env request refused", "name", truncate(kv.Name, 64), "reason", why)
		return false
	}
	se.envBytes += len(kv.Name) + 1 + len(kv.Value)
	for i, e := range se.env {
		if strings.HasPrefix(e, kv.Name+"=") {
			se.env[i] = kv.Name + "=" + kv.Value
			return true
		}
	}
	se.env = append(se.env, kv.Name+"="+kv.Value)
	return true
}

// Bounds on what a client may set before its command starts.
const (
	maxEnvVars  = 64
	maxEnvBytes = 256 * 1024
)
