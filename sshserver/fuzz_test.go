package sshserver

import (
	"testing"

	gossh "golang.org/x/crypto/ssh"

	"github.com/darling-sshd/darling-sshd/auth"
)

// FuzzAcceptEnv: the filter never accepts a denied or malformed name,
// whatever --accept-env holds.
func FuzzAcceptEnv(f *testing.F) {
	for _, seed := range []string{"TERM", "LD_PRELOAD", "LC_ALL", "PATH", "A-B", "", "DARLING_SSHD_SESSION", "NIX_PATH\x00"} {
		f.Add(seed, "*")
	}
	f.Fuzz(func(t *testing.T, name, pattern string) {
		ok, _ := acceptEnv(append(DefaultAcceptEnv(), pattern), name)
		if ok && (!auth.ValidEnvName(name) || matchAny(deniedEnv(), name)) {
			t.Errorf("accepted %q with --accept-env %q", name, pattern)
		}
	})
}

// FuzzPtyRequest: pty-req payloads and their modes never panic, and what
// parses can be applied.
func FuzzPtyRequest(f *testing.F) {
	f.Add(gossh.Marshal(struct {
		Term       string
		C, R, W, H uint32
		Modes      string
	}{"xterm", 80, 24, 0, 0, "\x35\x00\x00\x00\x00\x00"}))
	f.Add([]byte{0, 0, 0, 5, 'x'})
	f.Fuzz(func(t *testing.T, payload []byte) {
		if r, err := parsePtyReq(payload); err == nil {
			p := r.pty()
			if p.Cols != clampSize(r.Cols) || p.Rows != clampSize(r.Rows) {
				t.Error("size lost")
			}
		}
	})
}
