package sshserver

import (
	"log/slog"
	"os"
	"strings"
	"testing"

	gossh "golang.org/x/crypto/ssh"

	"github.com/darling-sshd/darling-sshd/auth"
	"github.com/darling-sshd/darling-sshd/darlingexec"
)

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

// TestSetEnvForcedCommand: under a key with command=, a client may set only
// the variables the key line's environment= sets; without command=,
// --accept-env decides alone. What is never accepted stays refused.
func TestSetEnvForcedCommand(t *testing.T) {
	forced := "nix-store --serve --write"
	const reason = "forced command: only the key's environment= names are accepted"
	for _, c := range []struct {
		name string
		opts auth.KeyOptions
		env  string
		want bool
	}{
		{"no command=", auth.KeyOptions{}, "NIX_REMOTE", true},
		{"no command=, environment= elsewhere", auth.KeyOptions{Environment: []string{"NIX_PATH=k"}}, "NIX_REMOTE", true},
		{"command=", auth.KeyOptions{Command: &forced}, "NIX_REMOTE", false},
		{"command=, LANG", auth.KeyOptions{Command: &forced}, "LANG", false},
		{"command=, other name in environment=", auth.KeyOptions{Command: &forced, Environment: []string{"NIX_PATH=k"}}, "NIX_REMOTE", false},
		{"command=, prefix of a name in environment=", auth.KeyOptions{Command: &forced, Environment: []string{"NIX_REMOTE_X=k"}}, "NIX_REMOTE", false},
		{"command=, name in environment=", auth.KeyOptions{Command: &forced, Environment: []string{"NIX_PATH=k", "NIX_REMOTE=daemon"}}, "NIX_REMOTE", true},
		{"command=, denied name in environment=", auth.KeyOptions{Command: &forced, Environment: []string{"LD_PRELOAD=x"}}, "LD_PRELOAD", false},
	} {
		var logb syncBuffer
		se := &session{s: &Server{acceptEnv: DefaultAcceptEnv()}, opts: c.opts,
			log: slog.New(slog.NewTextHandler(&logb, nil)), phase: requested}
		got := se.setEnv(gossh.Marshal(struct{ Name, Value string }{c.env, "evil"}))
		if got != c.want {
			t.Errorf("%s: setEnv(%s) = %v, want %v; log %q", c.name, c.env, got, c.want, logb.String())
		}
		if got != (len(se.env) == 1) {
			t.Errorf("%s: env %q after setEnv = %v", c.name, se.env, got)
		}
		if forcedRefusal := !c.want && c.opts.Command != nil && !strings.HasPrefix(c.env, "LD_"); forcedRefusal &&
			!strings.Contains(logb.String(), reason) {
			t.Errorf("%s: log lacks the reason: %q", c.name, logb.String())
		}
	}
}

// TestForcedCommandClientEnv: through a server, a client's env request
// under a command= key is refused unless environment= names the variable,
// and then the key's value is the one the command gets.
func TestForcedCommandClientEnv(t *testing.T) {
	f := newFakeLauncher(t)
	s := startFake(t, f, func(o *Options) {
		pub, err := os.ReadFile(o.AuthorizedKeysPath)
		if err != nil {
			t.Fatal(err)
		}
		line := `command="nix-store --serve",environment="NIX_PATH=from-key" ` + string(pub)
		if err := os.WriteFile(o.AuthorizedKeysPath, []byte(line), 0o600); err != nil {
			t.Fatal(err)
		}
	})
	ch := openSession(t, s.dial(t))
	if ch.request(t, "env", struct{ Name, Value string }{"NIX_REMOTE", "evil"}) {
		t.Error("NIX_REMOTE accepted under command=")
	}
	if ch.request(t, "env", struct{ Name, Value string }{"LANG", "C"}) {
		t.Error("LANG accepted under command= without environment=")
	}
	if !ch.request(t, "env", struct{ Name, Value string }{"NIX_PATH", "from-client"}) {
		t.Error("NIX_PATH, which environment= sets, refused")
	}
	ch.exec(t, "echo asked")
	cmd := next(t, f)
	if cmd.Req.Command != "nix-store --serve" {
		t.Errorf("command %q, want the forced one", cmd.Req.Command)
	}
	nixPath := ""
	for _, kv := range cmd.Req.Env {
		if strings.HasPrefix(kv, "NIX_REMOTE=") || strings.HasPrefix(kv, "LANG=") {
			t.Errorf("client variable reached the forced command: %s", kv)
		}
		if v, ok := strings.CutPrefix(kv, "NIX_PATH="); ok {
			nixPath = v // the last one wins
		}
	}
	if nixPath != "from-key" {
		t.Errorf("NIX_PATH %q, want the key's (env %q)", nixPath, cmd.Req.Env)
	}
	cmd.Exit(darlingexec.ExitStatus{}, false)
	ch.finish(t)
	if !strings.Contains(s.log.String(), "forced command: only the key's environment= names are accepted") {
		t.Errorf("refusal not logged:\n%s", s.log.String())
	}
}
