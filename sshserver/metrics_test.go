package sshserver

import (
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/darling-sshd/darling-sshd/darlingexec"
)

// exposition is a parsed text format 0.0.4 document: each series (name
// and labels, as series() writes them) with its value, and each family's
// type.
type exposition struct {
	values map[string]float64
	types  map[string]string
}

var (
	metricName = regexp.MustCompile(`^[a-zA-Z_:][a-zA-Z0-9_:]*$`)
	labelName  = regexp.MustCompile(`^[a-zA-Z_][a-zA-Z0-9_]*$`)
)

// parseExposition checks every line of doc against the text exposition
// format 0.0.4, as strictly as this server writes it: "# HELP name text"
// and "# TYPE name counter|gauge" once per family, the TYPE before the
// family's samples, a family's lines together, samples as
// name{label="value",...} number, names and labels well-formed, label
// values and HELP texts escaped, no series twice, counters not negative.
func parseExposition(doc string) (*exposition, error) {
	e := &exposition{values: map[string]float64{}, types: map[string]string{}}
	if doc == "" || !strings.HasSuffix(doc, "\n") {
		return nil, errors.New("the document does not end with a line feed")
	}
	helped := map[string]bool{}
	done := map[string]bool{} // families whose lines are over
	current := ""
	enter := func(name string) error {
		if name != current {
			if done[name] {
				return fmt.Errorf("family %s continues after another", name)
			}
			if current != "" {
				done[current] = true
			}
			current = name
		}
		return nil
	}
	for i, line := range strings.Split(strings.TrimSuffix(doc, "\n"), "\n") {
		fail := func(format string, a ...any) error {
			return fmt.Errorf("line %d %q: %s", i+1, line, fmt.Sprintf(format, a...))
		}
		if rest, ok := strings.CutPrefix(line, "# "); ok {
			kw, rest, _ := strings.Cut(rest, " ")
			name, text, ok := strings.Cut(rest, " ")
			if !ok || !metricName.MatchString(name) {
				return nil, fail("bad metric name")
			}
			if err := enter(name); err != nil {
				return nil, fail("%v", err)
			}
			switch kw {
			case "HELP":
				if helped[name] {
					return nil, fail("second HELP")
				}
				helped[name] = true
				if _, err := unescape(text, false); err != nil {
					return nil, fail("%v", err)
				}
			case "TYPE":
				if e.types[name] != "" {
					return nil, fail("second TYPE")
				}
				if text != "counter" && text != "gauge" {
					return nil, fail("type %q", text)
				}
				e.types[name] = text
			default:
				return nil, fail("not HELP or TYPE")
			}
			continue
		}
		name, labels, value, err := parseSample(line)
		if err != nil {
			return nil, fail("%v", err)
		}
		if e.types[name] == "" {
			return nil, fail("sample before its TYPE")
		}
		if !helped[name] {
			return nil, fail("sample without HELP")
		}
		if err := enter(name); err != nil {
			return nil, fail("%v", err)
		}
		key := series(name, labels)
		if _, dup := e.values[key]; dup {
			return nil, fail("series twice")
		}
		if e.types[name] == "counter" && !(value >= 0) {
			return nil, fail("counter %v", value)
		}
		e.values[key] = value
	}
	return e, nil
}

// parseSample parses name{label="value",...} value.
func parseSample(line string) (name string, labels map[string]string, value float64, err error) {
	end := strings.IndexAny(line, "{ ")
	if end < 0 {
		return "", nil, 0, errors.New("no value")
	}
	name, rest := line[:end], line[end:]
	if !metricName.MatchString(name) {
		return "", nil, 0, errors.New("bad metric name")
	}
	labels = map[string]string{}
	if rest[0] == '{' {
		rest = rest[1:]
		for !strings.HasPrefix(rest, "}") {
			ln, after, ok := strings.Cut(rest, `="`)
			if !ok || !labelName.MatchString(ln) || strings.HasPrefix(ln, "__") {
				return "", nil, 0, fmt.Errorf("bad label at %q", rest)
			}
			if _, dup := labels[ln]; dup {
				return "", nil, 0, fmt.Errorf("label %s twice", ln)
			}
			v, after, err := cutQuoted(after)
			if err != nil {
				return "", nil, 0, err
			}
			labels[ln] = v
			if after, ok = strings.CutPrefix(after, ","); !ok && !strings.HasPrefix(after, "}") {
				return "", nil, 0, fmt.Errorf("want , or } at %q", after)
			}
			rest = after
		}
		rest = rest[1:]
	}
	rest, ok := strings.CutPrefix(rest, " ")
	if !ok || strings.Contains(rest, " ") {
		return "", nil, 0, fmt.Errorf("want one space and a value (no timestamp) at %q", rest)
	}
	switch rest {
	case "NaN":
		value = math.NaN()
	case "+Inf":
		value = math.Inf(1)
	case "-Inf":
		value = math.Inf(-1)
	default:
		if value, err = strconv.ParseFloat(rest, 64); err != nil || strings.ContainsAny(rest, "_xXpP") {
			return "", nil, 0, fmt.Errorf("value %q", rest)
		}
	}
	return name, labels, value, nil
}

// cutQuoted reads an escaped label value up to its closing quote.
func cutQuoted(s string) (v, rest string, err error) {
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '"':
			v, err := unescape(s[:i], true)
			return v, s[i+1:], err
		case '\\':
			i++
		}
	}
	return "", "", errors.New("unterminated label value")
}

// unescape undoes the format's escapes: \\ and \n, and \" in label
// values; any other backslash, or a raw line feed, is an error.
func unescape(s string, label bool) (string, error) {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '\n':
			return "", errors.New("raw line feed")
		case c == '"' && label:
			return "", errors.New("unescaped quote")
		case c != '\\':
			b.WriteByte(c)
			continue
		}
		if i++; i == len(s) {
			return "", errors.New("backslash at the end")
		}
		switch s[i] {
		case '\\':
			b.WriteByte('\\')
		case 'n':
			b.WriteByte('\n')
		case '"':
			if !label {
				return "", errors.New(`\" in a HELP text`)
			}
			b.WriteByte('"')
		default:
			return "", fmt.Errorf("unknown escape \\%c", s[i])
		}
	}
	return b.String(), nil
}

// series names a series: its name and its labels, sorted, quoted.
func series(name string, labels map[string]string) string {
	var ls []string
	for k, v := range labels {
		ls = append(ls, k+"="+strconv.Quote(v))
	}
	slices.Sort(ls)
	if len(ls) == 0 {
		return name
	}
	return name + "{" + strings.Join(ls, ",") + "}"
}

// scrape GETs /metrics on addr and parses it.
func scrape(t *testing.T, addr string) *exposition {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/plain; version=0.0.4; charset=utf-8" {
		t.Fatalf("%s, Content-Type %q", resp.Status, resp.Header.Get("Content-Type"))
	}
	e, err := parseExposition(string(body))
	if err != nil {
		t.Fatalf("%v in\n%s", err, body)
	}
	return e
}

// TestMetricsSession: the metrics parse and move with a session.
func TestMetricsSession(t *testing.T) {
	f := newFakeLauncher(t)
	fs := startFake(t, f, nil)
	c := fs.dial(t)
	_, addr := serveMonitors(t, fs)

	e := scrape(t, addr)
	for series, want := range map[string]float64{
		"darling_sshd_logins_total":                              1,
		"darling_sshd_sessions_running":                          0,
		"darling_sshd_sessions_started_total":                    0,
		`darling_sshd_refusals_total{reason="unknown_key"}`:      0,
		`darling_sshd_refusals_total{reason="max_startups"}`:     0,
		`darling_sshd_refusals_total{reason="login_grace_time"}`: 0,
		`darling_sshd_refusals_total{reason="user_not_allowed"}`: 0,
		"darling_sshd_container_up":                              1,
		"darling_sshd_container_start_time_seconds":              float64(f.since.Unix()),
		"darling_sshd_unauthenticated_connections":               0,
		"darling_sshd_bytes_received_total":                      0,
		"darling_sshd_bytes_sent_total":                          0,
	} {
		if got, ok := e.values[series]; !ok || got != want {
			t.Errorf("%s = %v (present %v), want %v", series, got, ok, want)
		}
	}
	if st := e.values["darling_sshd_start_time_seconds"]; time.Since(time.Unix(int64(st), 0)) > time.Minute {
		t.Errorf("start time %v", st)
	}
	for name, typ := range map[string]string{"darling_sshd_logins_total": "counter", "darling_sshd_sessions_running": "gauge",
		"darling_sshd_refusals_total": "counter", "darling_sshd_sessions_total": "counter"} {
		if e.types[name] != typ {
			t.Errorf("TYPE of %s: %q, want %s", name, e.types[name], typ)
		}
	}

	ch := openSession(t, c)
	ch.exec(t, "build")
	cmd := next(t, f)
	go cmd.Out.Write([]byte("12345"))
	if _, err := io.ReadFull(ch, make([]byte, 5)); err != nil {
		t.Fatal(err)
	}
	if !waitUntil(func() bool {
		e = scrape(t, addr)
		return e.values["darling_sshd_sessions_running"] == 1 && e.values["darling_sshd_bytes_sent_total"] == 5
	}) {
		t.Errorf("while running: %v", e.values)
	}
	cmd.Exit(darlingexec.ExitStatus{Code: 2}, false)
	ch.finish(t)
	if !waitUntil(func() bool {
		e = scrape(t, addr)
		return e.values["darling_sshd_sessions_running"] == 0 && e.values[`darling_sshd_sessions_total{end="status 2"}`] == 1
	}) {
		t.Errorf("after the end: %v", e.values)
	}
	if e.values["darling_sshd_bytes_sent_total"] != 5 || e.values["darling_sshd_sessions_started_total"] != 1 {
		t.Errorf("after the end: %v", e.values)
	}
}

// TestMetricsEscaping: label values with quotes, backslashes and line
// feeds come back as they were.
func TestMetricsEscaping(t *testing.T) {
	f := newFakeLauncher(t)
	fs := startFake(t, f, nil)
	// Serve has started once a login passed: gliderlabs' Shutdown races
	// with a Serve that has not yet tracked its listener.
	fs.dial(t)
	weird := []string{`say "hi"`, `back\slash`, "two\nlines", `\n`, `\"`, "ünïcode"}
	var zero atomic.Int64
	for _, w := range weird {
		fs.reg.end(fs.reg.add(SessionInfo{}, &zero, &zero), w)
	}
	var b strings.Builder
	fs.writeMetrics(&b)
	e, err := parseExposition(b.String())
	if err != nil {
		t.Fatalf("%v in\n%s", err, b.String())
	}
	for _, w := range weird {
		if e.values[series("darling_sshd_sessions_total", map[string]string{"end": w})] != 1 {
			t.Errorf("%q not found in\n%s", w, b.String())
		}
	}
}

// TestMetricsParserStrict: the test's parser refuses what the format
// does not allow, so that a pass means something.
func TestMetricsParserStrict(t *testing.T) {
	head := "# HELP m A metric.\n# TYPE m counter\n"
	for _, doc := range []string{
		"m 1\n",                                // no TYPE
		head + "m 1",                           // no final line feed
		head + "m 1\nm 2\n",                    // series twice
		head + `m{a="1",a="2"} 1` + "\n",       // label twice
		head + `m{a="x\q"} 1` + "\n",           // unknown escape
		head + `m{a="x"y"} 1` + "\n",           // unescaped quote
		head + `m{9a="x"} 1` + "\n",            // bad label name
		head + `m{__a="x"} 1` + "\n",           // reserved label name
		head + "m -1\n",                        // negative counter
		head + "m one\n",                       // not a number
		head + "m  1\n",                        // two spaces
		"# HELP 9m x\n# TYPE 9m gauge\n9m 1\n", // bad metric name
		"# TYPE m gauge\n# HELP m x\nm 1\n# TYPE n gauge\n# HELP n x\nn 1\nm 2\n", // family split
		"# TYPE m summary\n# HELP m x\nm 1\n",                                     // a type this server never writes
		"# comment\n",                                                             // neither HELP nor TYPE
		head + "\n",                                                               // empty line
		"# HELP m a\\qb\n# TYPE m gauge\nm 1\n",                                   // bad HELP escape
	} {
		if _, err := parseExposition(doc); err == nil {
			t.Errorf("accepted %q", doc)
		}
	}
	if _, err := parseExposition(head + `m{a="x\\ \" \n",b=""} 1.5e3` + "\nm 0\n"); err != nil {
		t.Errorf("refused a valid document: %v", err)
	}
}

func TestMetricsAddrLoopbackOnly(t *testing.T) {
	for addr, ok := range map[string]bool{
		"127.0.0.1:9122": true, "[::1]:9122": true, "127.0.0.2:1": true,
		"0.0.0.0:9122": false, ":9122": false, "[::]:9122": false, "10.1.2.3:9122": false,
		"localhost:9122": false, "9122": false,
	} {
		o := DefaultOptions()
		o.MetricsAddr = addr
		err := o.Validate()
		var oe *OptionError
		if ok != (err == nil) || (err != nil && (!errors.As(err, &oe) || oe.Flag != "metrics")) {
			t.Errorf("%q: %v", addr, err)
		}
	}
}
