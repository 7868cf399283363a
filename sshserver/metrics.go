package sshserver

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"
)

// metricsContentType is the Prometheus text exposition format 0.0.4.
const metricsContentType = "text/plain; version=0.0.4; charset=utf-8"

// checkLoopback accepts host:port with a loopback IP address only: the
// metrics are not authenticated, and name the server's refusals.
func checkLoopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	ip, err := netip.ParseAddr(host)
	if err != nil || !ip.Unmap().IsLoopback() {
		return fmt.Errorf("%q: want a loopback address such as 127.0.0.1:9122 (the metrics are not authenticated)", addr)
	}
	return nil
}

// metricsServer serves /metrics. The timeouts keep a stalled scraper from
// holding a connection.
func (s *Server) metricsServer() *http.Server {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", metricsContentType)
		bw := bufio.NewWriter(w)
		s.writeMetrics(bw)
		_ = bw.Flush()
	})
	return &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, WriteTimeout: 10 * time.Second,
		IdleTimeout: time.Minute}
}

// serveMetrics serves hs on l until hs is closed.
func (s *Server) serveMetrics(hs *http.Server, l net.Listener) {
	if err := hs.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
		s.log.Error("metrics server stopped", "err", err)
	}
}

// writeMetrics writes the counters and gauges in the text format 0.0.4:
// each family's HELP and TYPE, then its samples; label values sorted, so
// that two scrapes list the same series in the same order.
func (s *Server) writeMetrics(w io.Writer) {
	st := s.status()
	c := st.Counters
	fam := func(name, typ, help string) {
		fmt.Fprintf(w, "# HELP %s %s\n# TYPE %s %s\n", name, escapeHelp(help), name, typ)
	}
	sample := func(name, labels string, v float64) {
		fmt.Fprintf(w, "%s%s %s\n", name, labels, strconv.FormatFloat(v, 'f', -1, 64))
	}
	byLabel := func(name, label string, m map[string]uint64) {
		for _, k := range slices.Sorted(maps.Keys(m)) {
			sample(name, "{"+label+`="`+escapeLabelValue(k)+`"}`, float64(m[k]))
		}
	}

	fam("darling_sshd_start_time_seconds", "gauge", "When the server started serving, in seconds since the Unix epoch.")
	sample("darling_sshd_start_time_seconds", "", unixSeconds(st.Server.Started))
	fam("darling_sshd_logins_total", "counter", "Successful authentications.")
	sample("darling_sshd_logins_total", "", float64(c.Logins))
	fam("darling_sshd_refusals_total", "counter", "Refused logins and dropped connections, by reason: one per refusal the log records.")
	refusals := maps.Clone(c.Refusals)
	for _, r := range refusalReasons {
		if _, ok := refusals[r]; !ok {
			refusals[r] = 0 // each known reason from the start
		}
	}
	byLabel("darling_sshd_refusals_total", "reason", refusals)
	fam("darling_sshd_unauthenticated_connections", "gauge", "Connections that have not logged in yet.")
	sample("darling_sshd_unauthenticated_connections", "", float64(s.unauthed.Load()))
	fam("darling_sshd_sessions_started_total", "counter", "Sessions whose command, shell or SFTP server started.")
	sample("darling_sshd_sessions_started_total", "", float64(c.SessionsStarted))
	fam("darling_sshd_sessions_total", "counter", `Sessions that ended, by how ("status 0", "client gone", ...).`)
	byLabel("darling_sshd_sessions_total", "end", c.SessionsEnded)
	fam("darling_sshd_sessions_running", "gauge", "Sessions running now.")
	sample("darling_sshd_sessions_running", "", float64(len(st.Sessions)))
	fam("darling_sshd_bytes_received_total", "counter", "Bytes received from clients for their commands' stdin.")
	sample("darling_sshd_bytes_received_total", "", float64(c.BytesIn))
	fam("darling_sshd_bytes_sent_total", "counter", "Bytes sent to clients from their commands' stdout and stderr.")
	sample("darling_sshd_bytes_sent_total", "", float64(c.BytesOut))
	fam("darling_sshd_container_up", "gauge", "1 if the prefix's container runs, else 0.")
	up := 0.0
	if st.Container.Pid != 0 {
		up = 1
	}
	sample("darling_sshd_container_up", "", up)
	fam("darling_sshd_pool_ready", "gauge", "Launchers started ahead of exec sessions that could take one now (of --prespawn).")
	sample("darling_sshd_pool_ready", "", float64(st.Pool.Ready))
	if st.Container.Pid != 0 && !st.Container.Since.IsZero() {
		fam("darling_sshd_container_start_time_seconds", "gauge", "When the prefix's container started, in seconds since the Unix epoch.")
		sample("darling_sshd_container_start_time_seconds", "", unixSeconds(st.Container.Since))
	}
}

// unixSeconds is t in seconds since the epoch, to the millisecond.
func unixSeconds(t time.Time) float64 {
	if t.IsZero() {
		return 0
	}
	return float64(t.UnixMilli()) / 1000
}

// escapeLabelValue escapes a label value as the text format wants:
// backslash, double quote and line feed.
func escapeLabelValue(v string) string {
	return strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`).Replace(v)
}

// escapeHelp escapes a HELP text: backslash and line feed.
func escapeHelp(v string) string {
	return strings.NewReplacer(`\`, `\\`, "\n", `\n`).Replace(v)
}
