package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/darling-sshd/darling-sshd/sshserver"
)

func statusCmd(fs *flag.FlagSet) action {
	stateDir := fs.String("state-dir", sshserver.DefaultOptions().StateDir, "state folder of the server to ask, as serve's --state-dir (its status.sock)")
	asJSON := fs.Bool("json", false, "print the server's status document as JSON, as it sent it")
	return func(stdout, stderr io.Writer) int {
		ctx := context.Background()
		if *asJSON {
			b, err := sshserver.QueryStatusJSON(ctx, *stateDir)
			if err != nil {
				return failed(stderr, "status", err)
			}
			_, _ = stdout.Write(b)
			return 0
		}
		st, err := sshserver.QueryStatus(ctx, *stateDir)
		if err != nil {
			return failed(stderr, "status", err)
		}
		printStatus(stdout, st, time.Now())
		return 0
	}
}

// printStatus writes st for a terminal: the server and its container,
// one line per running session, then the counters. Every string that
// came from a client is made safe to print (see safe).
func printStatus(w io.Writer, st *sshserver.Status, now time.Time) {
	srv := st.Server
	version := ""
	if srv.Version != "" {
		version = ", version " + safe(srv.Version, 40)
	}
	fmt.Fprintf(w, "server     %s, up %s (since %s)%s\n", safe(srv.Listen, 80), ago(srv.Started, now), stamp(srv.Started), version)
	fmt.Fprintf(w, "prefix     %s (launcher %s)\n", safe(srv.Prefix, 200), safe(srv.Launcher, 200))
	if c := st.Container; c.Pid != 0 {
		fmt.Fprintf(w, "container  pid %d, up %s (since %s)\n", c.Pid, ago(c.Since, now), stamp(c.Since))
	} else {
		fmt.Fprintln(w, "container  none running (the next session starts one)")
	}
	if p := st.Pool; p.Size > 0 {
		fmt.Fprintf(w, "pool       %d of %d launchers started ahead ready\n", p.Ready, p.Size)
	}

	fmt.Fprintf(w, "\nsessions running: %d\n", len(st.Sessions))
	if len(st.Sessions) > 0 {
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "USER\tREMOTE\tKEY\tPID\tSTARTED\tIN\tOUT\tCOMMAND")
		for _, s := range st.Sessions {
			pid := "-"
			if s.Pid != 0 {
				pid = strconv.Itoa(s.Pid)
			}
			command := s.Command
			if s.Kind == "exec" {
				command = quote(command, 80)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", safe(s.User, 32), safe(s.Remote, 64), safe(s.Key, 60), pid,
				ago(s.Started, now)+" ago", byteSize(s.BytesIn), byteSize(s.BytesOut), safe(command, 100))
		}
		tw.Flush()
	}

	c := st.Counters
	fmt.Fprintf(w, "\nsince start: %d logins, %d sessions started, %s received, %s sent\n",
		c.Logins, c.SessionsStarted, byteSize(int64(c.BytesIn)), byteSize(int64(c.BytesOut)))
	fmt.Fprintf(w, "refusals:    %s\n", tally(c.Refusals))
	fmt.Fprintf(w, "ended:       %s\n", tally(c.SessionsEnded))
}

// tally lists counts by name, largest first: "3 unknown_key, 1 ...".
func tally(m map[string]uint64) string {
	if len(m) == 0 {
		return "none"
	}
	keys := slices.SortedFunc(maps.Keys(m), func(a, b string) int {
		if m[a] != m[b] {
			if m[a] > m[b] {
				return -1
			}
			return 1
		}
		return strings.Compare(a, b)
	})
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%d %s", m[k], safe(k, 40))
	}
	return strings.Join(parts, ", ")
}

// quote quotes a command as a Go string, control characters escaped, cut
// at limit runes first.
func quote(s string, limit int) string {
	return strconv.Quote(cut(s, limit))
}

// safe returns s cut at limit runes, quoted if it holds anything a
// terminal would interpret (control characters, escapes, invalid UTF-8)
// or that would break the table's columns (spaces are kept).
func safe(s string, limit int) string {
	s = cut(s, limit)
	if !utf8.ValidString(s) || strings.IndexFunc(s, func(r rune) bool { return !unicode.IsGraphic(r) && r != ' ' }) >= 0 {
		return strconv.Quote(s)
	}
	return s
}

// cut shortens s to limit runes, marking the cut with "…".
func cut(s string, limit int) string {
	if utf8.RuneCountInString(s) <= limit {
		return s
	}
	return string([]rune(s)[:limit]) + "…"
}

// ago is how long before now t was, to the second; "?" if unknown.
func ago(t, now time.Time) string {
	if t.IsZero() {
		return "?"
	}
	return now.Sub(t).Round(time.Second).String()
}

// stamp is t in local time, to the second.
func stamp(t time.Time) string {
	if t.IsZero() {
		return "unknown"
	}
	return t.Local().Format("2006-01-02 15:04:05")
}

// byteSize is n in B, KiB, MiB or GiB.
func byteSize(n int64) string {
	const unit = 1024
	if n < unit {
		return strconv.FormatInt(n, 10) + " B"
	}
	v, suffix := float64(n)/unit, "KiB"
	for _, s := range []string{"MiB", "GiB", "TiB"} {
		if v < unit {
			break
		}
		v, suffix = v/unit, s
	}
	return strconv.FormatFloat(v, 'f', 1, 64) + " " + suffix
}
