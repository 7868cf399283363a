package integration

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// keyServer starts a server whose authorized keys file holds lines made
// by lines(pub) from a fresh client key, and returns the server and the
// key's path.
func keyServer(t *testing.T, lines func(pub string) string) (*server, string) {
	t.Helper()
	dir := t.TempDir()
	key := newKey(t, dir, "id")
	pub, _ := os.ReadFile(key + ".pub")
	ak := filepath.Join(dir, "authorized_keys")
	if err := os.WriteFile(ak, []byte(lines(strings.TrimSpace(string(pub)))), 0o644); err != nil {
		t.Fatal(err)
	}
	s := startServer(t, serverOpt{args: []string{"--authorized-keys", ak}})
	return s, key
}

func (s *server) sshWith(key string, args ...string) (string, string, int) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := s.ssh(ctx, append([]string{"-i", key}, args...)...)
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	cmd.Run()
	return out.String(), errb.String(), cmd.ProcessState.ExitCode()
}

func TestForcedCommand(t *testing.T) {
	s, key := keyServer(t, func(pub string) string {
		return `command="echo forced; echo orig=$SSH_ORIGINAL_COMMAND" ` + pub + "\n"
	})
	if out, _, code := s.sshWith(key, "dut", "echo asked"); out != "forced\norig=echo asked\n" || code != 0 {
		t.Errorf("exec under command=: %q %d", out, code)
	}
	if out, _, _ := s.sshWith(key, "-T", "dut"); out != "forced\norig=\n" {
		t.Errorf("shell under command=: %q", out)
	}
	if out, _, _ := s.sshWith(key, "-s", "dut", "sftp"); out != "forced\norig=sftp\n" {
		t.Errorf("subsystem under command=: %q", out)
	}
}

func TestKeyRestrictions(t *testing.T) {
	s, key := keyServer(t, func(pub string) string {
		return `restrict,environment="FROM_KEY=yes",environment="DPREFIX=/evil" ` + pub + "\n"
	})
	// OpenSSH's ssh -tt gives up when the pty is refused.
	out, errs, _ := s.sshWith(key, "-tt", "dut", "tty >/dev/null && echo has-tty || echo no-tty")
	if strings.Contains(out, "has-tty") || !strings.Contains(errs, "PTY allocation request failed") {
		t.Errorf("restrict gave a pty: %q %q", out, errs)
	}
	if !s.logged("pty request refused") {
		t.Error("pty refusal not logged")
	}
	// DPREFIX is the server's to set; Darling's launcher removes it
	// before the command runs.
	out, _, _ = s.sshWith(key, "dut", `echo "$FROM_KEY ${DPREFIX-unset}"`)
	if out != "yes unset\n" {
		t.Errorf("environment=: %q", out)
	}
}

func TestKeyFromAndExpiry(t *testing.T) {
	dir := t.TempDir()
	keys := map[string]string{}
	var lines []string
	for name, opt := range map[string]string{
		"local":   `from="127.0.0.0/8"`,
		"remote":  `from="10.0.0.0/8,192.0.2.*"`,
		"negated": `from="!127.0.0.1,*"`,
		"expired": `expiry-time="20200101"`,
		"future":  `expiry-time="20991231"`,
		"unknown": `frobnicate`,
		"verify":  `verify-required`,
	} {
		k := newKey(t, dir, name)
		pub, _ := os.ReadFile(k + ".pub")
		keys[name] = k
		lines = append(lines, opt+" "+strings.TrimSpace(string(pub)))
	}
	ak := filepath.Join(dir, "authorized_keys")
	os.WriteFile(ak, []byte(strings.Join(lines, "\n")+"\n"), 0o644)
	s := startServer(t, serverOpt{args: []string{"--authorized-keys", ak}})
	for name, want := range map[string]bool{"local": true, "remote": false, "negated": false, "expired": false,
		"future": true, "unknown": false, "verify": false} {
		out, _, code := s.sshWith(keys[name], "dut", "echo in")
		if got := code == 0 && out == "in\n"; got != want {
			t.Errorf("key %s: logged in %v, want %v", name, got, want)
		}
	}
	for _, l := range []string{"address not allowed by from=", "key expired", `option \"frobnicate\" is not supported`, "verify-required is not supported"} {
		if !s.logged(l) {
			t.Errorf("log lacks %q", l)
		}
	}
}

// TestKeyTypes: ed25519, ECDSA and RSA (with rsa-sha2 signatures) keys log
// in; an RSA client limited to SHA-1 signatures does not.
func TestKeyTypes(t *testing.T) {
	dir := t.TempDir()
	var lines []string
	keys := map[string]string{}
	for _, kt := range []string{"ed25519", "ecdsa", "rsa"} {
		k := filepath.Join(dir, "id_"+kt)
		run(t, "ssh-keygen", "-q", "-t", kt, "-N", "", "-f", k)
		pub, _ := os.ReadFile(k + ".pub")
		lines = append(lines, strings.TrimSpace(string(pub)))
		keys[kt] = k
	}
	ak := filepath.Join(dir, "authorized_keys")
	os.WriteFile(ak, []byte(strings.Join(lines, "\n")+"\n"), 0o644)
	s := startServer(t, serverOpt{args: []string{"--authorized-keys", ak}})
	for kt, k := range keys {
		if out, errs, code := s.sshWith(k, "dut", "echo "+kt); out != kt+"\n" {
			t.Errorf("%s key: %q %q %d", kt, out, errs, code)
		}
	}
	if out, _, code := s.sshWith(keys["rsa"], "-o", "PubkeyAcceptedAlgorithms=ssh-rsa", "dut", "echo sha1"); code == 0 {
		t.Errorf("an ssh-rsa (SHA-1) signature logged in: %q", out)
	}
}
