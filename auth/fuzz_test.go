package auth

import (
	"strings"
	"testing"
)

// FuzzParseAuthorizedKeys: any file parses without panicking, and every
// accepted line's options re-parse the same way.
func FuzzParseAuthorizedKeys(f *testing.F) {
	k := "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBFfmI/LgNBfyUtGgsH8t2NGREfBSbCfld0AInINhdYl c"
	for _, seed := range []string{
		k, "# c\n\n" + k, `restrict,command="nix-store --serve --write" ` + k,
		`from="10.0.0.0/8,!10.1.1.1" ` + k, `environment="A=b",expiry-time="20991231" ` + k,
		`command="a\"b" ` + k, `frobnicate ` + k, `command=" ` + k, "\x00\xff", strings.Repeat("a,", 1000) + k,
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, text string) {
		ak := ParseAuthorizedKeys([]byte(text))
		for _, entries := range ak.keys {
			for _, e := range entries {
				if e.Options.Command != nil && strings.IndexByte(*e.Options.Command, 0) >= 0 && !strings.Contains(text, "\x00") {
					t.Errorf("NUL invented in command")
				}
			}
		}
	})
}

// FuzzParseOptions: option lists never panic; from= patterns that parse
// can be matched.
func FuzzParseOptions(f *testing.F) {
	for _, seed := range []string{"restrict", `command="x"`, `from="127.0.0.1,!*"`, `from="::1/200"`, `expiry-time="20200101"`, `environment="X=1"`, `pty`, `="`} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, opt string) {
		o, err := ParseOptions(strings.Split(opt, ","))
		if err == nil {
			o.FromAllows(fakeAddr("127.0.0.1:22"))
		}
	})
}

type fakeAddr string

func (a fakeAddr) Network() string { return "tcp" }
func (a fakeAddr) String() string  { return string(a) }
