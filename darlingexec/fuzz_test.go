package darlingexec

import (
	"strings"
	"testing"
)

// FuzzScript: for any command, the script quotes it so that the joined
// launcher string unquotes back to the script, and Check bounds it.
func FuzzScript(f *testing.F) {
	for _, seed := range []string{"", "'", `'\''`, "a\nb", "$(x) `y` \"z\"", strings.Repeat("'", 100), "\x00"} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, cmd string) {
		l := &Launcher{Prefix: "/p", Style: StyleFlag}
		args := l.Args(Request{Command: cmd}, "\x1emark\x1e")
		script := args[len(args)-1]
		// The command appears once, single-quoted, at the end, run (not
		// exec'd: its status must survive a signal) by the script's shell.
		if !strings.HasSuffix(script, " sh /bin/sh -c "+shQuote(cmd)+"; exit $?") {
			t.Fatalf("script does not end with the quoted command: %q", script)
		}
		if got := unquoteSingle(shQuote(cmd)); got != cmd {
			t.Fatalf("quoting does not round-trip: %q -> %q", cmd, got)
		}
		err := Check(args, nil)
		if strings.IndexByte(cmd, 0) >= 0 && err == nil {
			t.Fatal("a NUL passed Check")
		}
		if err == nil && joinedLen(shellArgs(args))+1 > MaxMessage {
			t.Fatal("an over-long command passed Check")
		}
	})
}

// unquoteSingle undoes shQuote as sh would: '...' literal, \' outside.
func unquoteSingle(s string) string {
	var b strings.Builder
	in := false
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '\'':
			in = !in
		case !in && c == '\\' && i+1 < len(s):
			i++
			b.WriteByte(s[i])
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}
