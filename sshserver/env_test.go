package sshserver

import "testing"

func TestAcceptEnv(t *testing.T) {
	accept := append(DefaultAcceptEnv(), "MY_*", "EXACT", "LD_LIBRARY_PATH", "PATH")
	for name, want := range map[string]bool{
		"TERM": true, "LANG": true, "LC_ALL": true, "LC_CTYPE": true, "NIX_REMOTE": true,
		"NIX_PATH": true, "NIX_SSL_CERT_FILE": true, "MY_VAR": true, "EXACT": true,
		"EXACTLY": false, "NIX_OTHER": false, "FOO": false,
		// Denied even when --accept-env names them.
		"LD_PRELOAD": false, "LD_LIBRARY_PATH": false, "DYLD_INSERT_LIBRARIES": false, "PATH": false,
		"HOME": false, "SHELL": false, "IFS": false, "DPREFIX": false, "DARLING_SSHD_SESSION": false,
		"SSH_CONNECTION": false, "USER": false, "BASH_ENV": false,
		// Not a name.
		"LC-ALL": false, "": false, "TERM=x": false, "LC_ALL\x00": false, "MY_VAR ": false, "MY_é": false,
	} {
		if got, why := acceptEnv(accept, name); got != want {
			t.Errorf("acceptEnv(%q) = %v (%s), want %v", name, got, why, want)
		}
	}
}

func TestCheckEnvPattern(t *testing.T) {
	for p, ok := range map[string]bool{"FOO": true, "NIX_*": true, "A?C": true, "[": false, "": false} {
		if err := CheckEnvPattern(p); (err == nil) != ok {
			t.Errorf("CheckEnvPattern(%q) = %v", p, err)
		}
	}
}
