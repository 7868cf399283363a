package sshserver

import "testing"

func TestAcceptEnv(t *testing.T) {
	for name, want := range map[string]bool{
		"TERM": true, "LANG": true, "LC_ALL": true, "LC_CTYPE": true,
		"LD_PRELOAD": false, "DYLD_INSERT_LIBRARIES": false, "PATH": false, "HOME": false,
		"DPREFIX": false, "LC-ALL": false, "": false, "TERM=x": false, "LC_ALL\x00": false,
		"DARLING_SSHD_SESSION": false,
	} {
		if got := acceptEnv(name); got != want {
			t.Errorf("acceptEnv(%q) = %v, want %v", name, got, want)
		}
	}
}
