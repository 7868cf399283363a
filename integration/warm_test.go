package integration

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// launcherScript writes an executable launcher wrapper around the
// stand-in and returns its path.
func launcherScript(t *testing.T, body string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "darling")
	script := "#!/bin/sh\nSTANDIN=" + bins.standin + "\n" + body + "\n"
	if err := os.WriteFile(path, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestWarmUpProvesLauncher: the warm-up refuses to serve, in one line
// naming the minimum Darling, through a launcher that lacks what the
// server relies on, as the Darling 0.1.20230310 many distributions ship
// does.
func TestWarmUpProvesLauncher(t *testing.T) {
	for _, tc := range []struct {
		name, body string
		want       []string
	}{
		{
			// Darling before 894d62c passed the command no environment
			// of the caller's: no session marker, no teardown.
			name: "no environment forwarding",
			body: `exec env -i HOME="$HOME" PATH="$PATH" DPREFIX="$DPREFIX" "$STANDIN" "$@"`,
			want: []string{"does not pass the environment", "v0.1.20251023"},
		},
		{
			// Darling before 980a02f (#1546) reported garbage statuses.
			name: "wrong exit status",
			body: `"$STANDIN" "$@"; exit 0`,
			want: []string{"reported exit status 0 for a command that exited 42", "v0.1.20251023"},
		},
		{
			// A launcher that runs commands somewhere else than P.
			name: "another prefix",
			body: `DPREFIX="$DPREFIX.elsewhere" exec "$STANDIN" "$@"`,
			want: []string{"did not run the command in the prefix", "v0.1.20251023"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			launcher := launcherScript(t, tc.body)
			log := serveFails(t, "--darling", launcher)
			prefix := serveFailsPrefix(log)
			t.Cleanup(func() { shutdownStandin(prefix + ".elsewhere") })
			for _, w := range tc.want {
				if !strings.Contains(log, w) {
					t.Errorf("log lacks %q:\n%s", w, log)
				}
			}
		})
	}
}

// serveFailsPrefix finds the prefix a failed serve named in its log.
func serveFailsPrefix(log string) string {
	_, rest, ok := strings.Cut(log, "warm prefix ")
	if !ok {
		return "/nonexistent"
	}
	p, _, _ := strings.Cut(rest, " ")
	return p
}

// TestWarmUpShowsLauncherOutput: a launcher that fails has its whole
// output shown (bounded), not only the last line.
func TestWarmUpShowsLauncherOutput(t *testing.T) {
	launcher := launcherScript(t, `echo "first line of the cause" >&2; echo "more on stdout"; echo "last line" >&2; exit 1`)
	log := serveFails(t, "--darling", launcher)
	for _, w := range []string{"launcher exited with status 1", "first line of the cause", "more on stdout", "last line"} {
		if !strings.Contains(log, w) {
			t.Errorf("log lacks %q:\n%s", w, log)
		}
	}
	// A flood is cut short.
	launcher = launcherScript(t, `head -c 10000000 /dev/zero | tr '\0' x >&2; exit 1`)
	if log := serveFails(t, "--darling", launcher); len(log) > 64<<10 {
		t.Errorf("a 10 MB launcher output made a %d-byte log", len(log))
	}
}

// TestWarmUpRetriesColdStart: the launcher that cold-starts the prefix's
// container can fail although the container came up (Darling's launcher
// waits for the shellspawn socket to exist, not to listen, and may
// connect in between: "Connection refused"). Here the first launcher
// starts the container, then fails so; the warm-up tries once more, finds
// the container running, and the server serves.
func TestWarmUpRetriesColdStart(t *testing.T) {
	once := filepath.Join(t.TempDir(), "failed-once")
	launcher := launcherScript(t, `if [ ! -e `+once+` ]; then
	touch `+once+`
	"$STANDIN" shell /bin/true </dev/null >/dev/null 2>&1
	echo "Error connecting to shellspawn in the container: Connection refused"
	exit 1
fi
exec "$STANDIN" "$@"`)
	s := startServer(t, serverOpt{args: []string{"--darling", launcher, "--prespawn", "0"}})
	if !strings.Contains(s.log.String(), "trying once more") {
		t.Errorf("no second try logged:\n%s", s.log.String())
	}
	if r := s.exec("echo served", ""); r.stdout != "served\n" || r.code != 0 {
		t.Errorf("session after a cold start that failed once: %+v", r)
	}
}
