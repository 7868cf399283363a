package sshserver

import (
	"strings"

	gossh "golang.org/x/crypto/ssh"
)

// validEnvName reports whether name is made of [A-Za-z0-9_] only.
func validEnvName(name string) bool {
	if name == "" {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !(c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}

// acceptEnv reports whether a client may set name: the terminal type and
// the locale, as OpenSSH's default AcceptEnv on Debian.
func acceptEnv(name string) bool {
	if !validEnvName(name) {
		return false
	}
	return name == "TERM" || name == "LANG" || strings.HasPrefix(name, "LC_")
}

// setEnv handles an "env" request. A refused variable is logged and
// reported to the client as a failed request, never fatal.
func (se *session) setEnv(payload []byte) bool {
	var kv struct{ Name, Value string }
	if err := gossh.Unmarshal(payload, &kv); err != nil {
		se.log.Info("env request refused", "reason", "malformed")
		return false
	}
	if se.started || !acceptEnv(kv.Name) || strings.IndexByte(kv.Value, 0) >= 0 {
		se.log.Info("env request refused", "name", truncate(kv.Name, 64))
		return false
	}
	for i, e := range se.env {
		if strings.HasPrefix(e, kv.Name+"=") {
			se.env[i] = kv.Name + "=" + kv.Value
			return true
		}
	}
	se.env = append(se.env, kv.Name+"="+kv.Value)
	return true
}
