package integration

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/darling-sshd/darling-sshd/sshserver"
)

// status runs `darling-sshd status` for s with extra flags.
func (s *server) status(extra ...string) (string, error) {
	cmd := exec.Command(bins.server, append([]string{"status", "--state-dir", filepath.Join(s.dir, "state")}, extra...)...)
	cmd.Env = append(os.Environ(), noRaceExitSleep)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// TestStatus: while a real ssh session's command has moved bytes both
// ways and blocks reading stdin, status shows it with its command and
// bytes, as a table and as JSON, and /metrics counts it; once it ends it
// is gone from both and counted as ended.
func TestStatus(t *testing.T) {
	s := startServer(t, serverOpt{args: []string{"--metrics", "127.0.0.1:0"}})
	m := regexp.MustCompile(`msg="serving metrics" url=(\S+)`).FindStringSubmatch(s.log.String())
	if m == nil {
		t.Fatalf("no metrics url logged:\n%s", s.log.String())
	}
	metricsURL := m[1]

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const command = `read x; echo got $x; cat >/dev/null`
	ssh := s.ssh(ctx, "dut", "--", command)
	stdin, _ := ssh.StdinPipe()
	stdout, _ := ssh.StdoutPipe()
	if err := ssh.Start(); err != nil {
		t.Fatal(err)
	}
	defer ssh.Process.Kill()
	fmt.Fprintln(stdin, "ping") // 5 bytes in
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || line != "got ping\n" { // 9 bytes out
		t.Fatalf("read %q, %v", line, err)
	}

	// The output pump counts a write once it returned, which may be after
	// the client read it.
	var table string
	bytesInOut := regexp.MustCompile(`\s5 B\s+9 B\s`)
	if !waitFor(10*time.Second, func() bool {
		table, err = s.status()
		return err == nil && bytesInOut.MatchString(table)
	}) {
		t.Fatalf("status: %v\n%s", err, table)
	}
	if !strings.Contains(table, strconv.Quote(command)) || !strings.Contains(table, "sessions running: 1") ||
		!strings.Contains(table, "127.0.0.1:"+s.port) || !strings.Contains(table, "container  pid "+strconv.Itoa(containerPidOf(s.prefix))) {
		t.Errorf("status:\n%s", table)
	}
	t.Logf("status:\n%s", table)

	raw, err := s.status("--json")
	if err != nil {
		t.Fatalf("status --json: %v\n%s", err, raw)
	}
	var st sshserver.Status
	if err := json.Unmarshal([]byte(raw), &st); err != nil {
		t.Fatalf("status --json: %v\n%s", err, raw)
	}
	fp := strings.Fields(run(t, "ssh-keygen", "-l", "-E", "sha256", "-f", s.clientKey+".pub"))[1]
	if len(st.Sessions) != 1 {
		t.Fatalf("sessions %+v", st.Sessions)
	}
	se := st.Sessions[0]
	if se.Command != command || se.Kind != "exec" || se.User != "root" || se.Key != fp || se.BytesIn != 5 || se.BytesOut != 9 ||
		!alive(se.Pid) || time.Since(se.Started) > time.Minute || !strings.HasPrefix(se.Remote, "127.0.0.1:") {
		t.Errorf("session %+v (key %s)", se, fp)
	}
	hostKey, _ := os.ReadFile(s.hostKey + ".pub")
	if st.Server.Listen != s.addr || st.Server.Prefix != s.prefix || st.Server.HostKey != strings.Join(strings.Fields(string(hostKey))[:2], " ") {
		t.Errorf("server %+v, host key %s", st.Server, hostKey)
	}
	if c := st.Container; c.Pid != containerPidOf(s.prefix) || time.Since(c.Since) > 5*time.Minute || time.Until(c.Since) > time.Second {
		t.Errorf("container %+v, .init.pid %d", c, containerPidOf(s.prefix))
	}
	if st.Counters.Logins != 1 || st.Counters.SessionsStarted != 1 {
		t.Errorf("counters %+v", st.Counters)
	}

	mt := scrapeMetrics(t, metricsURL)
	for series, want := range map[string]float64{
		"darling_sshd_sessions_running":     1,
		"darling_sshd_logins_total":         1,
		"darling_sshd_bytes_received_total": 5,
		"darling_sshd_bytes_sent_total":     9,
		"darling_sshd_container_up":         1,
	} {
		if mt[series] != want {
			t.Errorf("%s = %v, want %v", series, mt[series], want)
		}
	}

	stdin.Close()
	if err := ssh.Wait(); err != nil {
		t.Fatalf("ssh: %v", err)
	}
	if !waitFor(10*time.Second, func() bool {
		mt = scrapeMetrics(t, metricsURL)
		return mt["darling_sshd_sessions_running"] == 0 && mt[`darling_sshd_sessions_total{end="status 0"}`] == 1
	}) {
		t.Errorf("after the session: %v", mt)
	}
	if table, err = s.status(); err != nil || !strings.Contains(table, "sessions running: 0") || !strings.Contains(table, "1 status 0") {
		t.Errorf("status after the session: %v\n%s", err, table)
	}
}

// TestStatusNoServer: status says what to check when nothing answers,
// and a server's socket is gone once it stopped.
func TestStatusNoServer(t *testing.T) {
	s := startServer(t, serverOpt{})
	sock := filepath.Join(s.dir, "state", "status.sock")
	if fi, err := os.Stat(sock); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("status socket: %v %v", fi, err)
	}
	s.stop()
	if _, err := os.Lstat(sock); !os.IsNotExist(err) {
		t.Errorf("status socket left after exit: %v", err)
	}
	out, err := s.status()
	dir := filepath.Join(s.dir, "state")
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 ||
		out != "darling-sshd status: no server answers on "+sock+": is serve running with --state-dir "+dir+"?\n" {
		t.Errorf("status without a server: %v\n%s", err, out)
	}
}

// scrapeMetrics GETs url and checks each line against the text format
// 0.0.4 (sshserver's unit tests parse it fully): HELP and TYPE lines, a
// family's TYPE before its samples, well-formed names, escaped label
// values, no series twice. It returns the samples by series.
func scrapeMetrics(t *testing.T, url string) map[string]float64 {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain; version=0.0.4") {
		t.Fatalf("%s %q\n%s", resp.Status, resp.Header.Get("Content-Type"), body)
	}
	const name = `[a-zA-Z_:][a-zA-Z0-9_:]*`
	var (
		help   = regexp.MustCompile(`^# HELP (` + name + `) (?:[^\\\n]|\\[\\n])*$`)
		typ    = regexp.MustCompile(`^# TYPE (` + name + `) (counter|gauge)$`)
		sample = regexp.MustCompile(`^(` + name + `)((?:\{[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"(?:,[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*")*\})?) (\S+)$`)
	)
	typed := map[string]bool{}
	samples := map[string]float64{}
	if !strings.HasSuffix(string(body), "\n") {
		t.Fatalf("no final line feed:\n%s", body)
	}
	for _, line := range strings.Split(strings.TrimSuffix(string(body), "\n"), "\n") {
		if help.MatchString(line) {
			continue
		}
		if m := typ.FindStringSubmatch(line); m != nil {
			if typed[m[1]] {
				t.Errorf("second TYPE: %q", line)
			}
			typed[m[1]] = true
			continue
		}
		m := sample.FindStringSubmatch(line)
		if m == nil {
			t.Fatalf("not a HELP, TYPE or sample line: %q\n%s", line, body)
		}
		v, err := strconv.ParseFloat(m[3], 64)
		if err != nil || !typed[m[1]] {
			t.Fatalf("value or TYPE missing: %q\n%s", line, body)
		}
		if _, dup := samples[m[1]+m[2]]; dup {
			t.Fatalf("series twice: %q", line)
		}
		samples[m[1]+m[2]] = v
	}
	return samples
}
