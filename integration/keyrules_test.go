package integration

import (
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// keyRulesServer starts a server whose authorized keys file holds, for each
// name in sorted order, the lines lines[name](pub) of a fresh client key,
// and returns the server and each key's path.
func keyRulesServer(t *testing.T, lines map[string]func(pub string) string) (*server, map[string]string) {
	t.Helper()
	dir := t.TempDir()
	keys := map[string]string{}
	var text strings.Builder
	for _, name := range slices.Sorted(maps.Keys(lines)) {
		k := newKey(t, dir, name)
		pub, _ := os.ReadFile(k + ".pub")
		keys[name] = k
		text.WriteString(lines[name](strings.TrimSpace(string(pub))))
	}
	ak := filepath.Join(dir, "authorized_keys")
	if err := os.WriteFile(ak, []byte(text.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return startServer(t, serverOpt{args: []string{"--authorized-keys", ak}}), keys
}

// TestKeyRulesForcedCommandEnv: under a command= key, what the client sets
// with SetEnv never reaches the forced command, unless the key line's
// environment= sets the same variable, whose value then wins. Without
// command=, the client's NIX_REMOTE arrives (the refusal is not vacuous).
func TestKeyRulesForcedCommandEnv(t *testing.T) {
	show := `echo "remote=${NIX_REMOTE-unset} path=${NIX_PATH-unset} lang=${LANG-unset}"`
	s, keys := keyRulesServer(t, map[string]func(string) string{
		"plain":  func(pub string) string { return pub + "\n" },
		"forced": func(pub string) string { return `command="` + strings.ReplaceAll(show, `"`, `\"`) + `" ` + pub + "\n" },
		"keyenv": func(pub string) string {
			return `command="` + strings.ReplaceAll(show, `"`, `\"`) + `",environment="NIX_REMOTE=from-key" ` + pub + "\n"
		},
	})
	set := []string{"-o", "SetEnv=NIX_REMOTE=evil NIX_PATH=nixpkgs=/evil LANG=C"}
	for name, want := range map[string]string{
		"plain":  "remote=evil path=nixpkgs=/evil lang=C\n",
		"forced": "remote=unset path=unset lang=unset\n",
		"keyenv": "remote=from-key path=unset lang=unset\n",
	} {
		out, errs, code := s.sshWith(keys[name], append(set, "dut", show)...)
		if out != want || code != 0 {
			t.Errorf("key %s: %q (stderr %q, status %d), want %q", name, out, errs, code, want)
		}
	}
	if !s.logged("forced command: only the key's environment= names are accepted") {
		t.Error("the refusal is not logged")
	}
}

// TestKeyRulesFirstLineWins: with the same key on two lines, the first
// line that allows the login decides, as in sshd: a plain line after a
// command= line does not lift the forced command.
func TestKeyRulesFirstLineWins(t *testing.T) {
	s, keys := keyRulesServer(t, map[string]func(string) string{
		"forcedfirst": func(pub string) string { return `command="echo forced" ` + pub + "\n" + pub + "\n" },
		"plainfirst":  func(pub string) string { return pub + "\n" + `command="echo forced" ` + pub + "\n" },
	})
	for name, want := range map[string]string{"forcedfirst": "forced\n", "plainfirst": "asked\n"} {
		if out, errs, code := s.sshWith(keys[name], "dut", "echo asked"); out != want || code != 0 {
			t.Errorf("key %s: %q (stderr %q, status %d), want %q", name, out, errs, code, want)
		}
	}
}

// TestKeyRulesFirstAllowingLine: a line whose from= or expiry-time refuses
// the login is skipped, and the next line for the same key is used, as in
// sshd; when every line refuses, the last refusal is logged.
func TestKeyRulesFirstAllowingLine(t *testing.T) {
	second := func(first string) func(string) string {
		return func(pub string) string {
			return first + `,command="echo first" ` + pub + "\n" + `command="echo second" ` + pub + "\n"
		}
	}
	s, keys := keyRulesServer(t, map[string]func(string) string{
		"fromfirst":    second(`from="10.0.0.0/8"`),
		"expiredfirst": second(`expiry-time="20200101"`),
		"localfirst":   second(`from="127.0.0.0/8"`),
		"nonematch": func(pub string) string {
			return `expiry-time="20200101" ` + pub + "\n" + `from="10.0.0.0/8" ` + pub + "\n"
		},
	})
	for name, want := range map[string]string{"fromfirst": "second\n", "expiredfirst": "second\n", "localfirst": "first\n"} {
		if out, errs, code := s.sshWith(keys[name], "dut", "echo asked"); out != want || code != 0 {
			t.Errorf("key %s: %q (stderr %q, status %d), want %q", name, out, errs, code, want)
		}
	}
	if out, _, code := s.sshWith(keys["nonematch"], "dut", "echo asked"); code == 0 {
		t.Errorf("key nonematch logged in: %q", out)
	}
	// The keys' lines are in name order: nonematch's are 7 and 8.
	if !s.logged("address not allowed by from= (line 8)") {
		t.Error("the last refusal is not logged")
	}
}
