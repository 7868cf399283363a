package sshserver

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	gossh "golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"

	"github.com/darling-sshd/darling-sshd/auth"
	"github.com/darling-sshd/darling-sshd/darlingexec"
)

// Status is what a running server reports on its status socket: one JSON
// document per connection.
type Status struct {
	Server    ServerInfo    `json:"server"`
	Container ContainerInfo `json:"container"` // Pid 0: none running
	Pool      PoolInfo      `json:"pool"`
	Sessions  []SessionInfo `json:"sessions"`
	Counters  Counters      `json:"counters"`
}

// ServerInfo is how the server was started: what register and status
// need to point clients at it.
type ServerInfo struct {
	Listen         string    `json:"listen"`   // the address actually listened on
	HostKey        string    `json:"host_key"` // the host public key as an authorized_keys line
	HostAlias      string    `json:"host_alias"`
	KnownHostsOut  string    `json:"known_hosts_out"`
	AuthorizedKeys string    `json:"authorized_keys"` // path
	Prefix         string    `json:"prefix"`
	Launcher       string    `json:"launcher"`
	Started        time.Time `json:"started"`
	Version        string    `json:"version,omitempty"` // may be empty
}

// ContainerInfo is the prefix's container, as verified for sessions.
type ContainerInfo struct {
	Pid   int       `json:"pid"`            // 0: none running
	Since time.Time `json:"since,omitzero"` // when it started
}

// PoolInfo is the launchers kept started ahead of exec sessions
// (--prespawn): they are not sessions.
type PoolInfo struct {
	Size  int `json:"size"`  // --prespawn; 0: no pool
	Ready int `json:"ready"` // idle launchers that could take a session now
}

// SessionInfo is one running session.
type SessionInfo struct {
	User   string `json:"user"`
	Remote string `json:"remote"`
	Key    string `json:"key"`  // SHA256 fingerprint of the key it logged in with
	Kind   string `json:"kind"` // exec, shell or sftp
	// Command is the exec command (a key's forced command if it has one;
	// cut at 1 KiB), or "shell" or "sftp".
	Command  string    `json:"command"`
	Pid      int       `json:"pid"` // the launcher's; 0 for SFTP, served in-process
	Started  time.Time `json:"started"`
	BytesIn  int64     `json:"bytes_in"`  // from the client: the command's stdin
	BytesOut int64     `json:"bytes_out"` // to the client: stdout and stderr
}

// Counters are what happened since the server started.
type Counters struct {
	Logins uint64 `json:"logins"` // successful authentications
	// Refusals counts refused logins and dropped connections by reason
	// (the refusal* constants), one per refusal the log records: a
	// connection that offers an unknown key and leaves counts
	// unknown_key and no_accepted_authentication.
	Refusals        map[string]uint64 `json:"refusals"`
	SessionsStarted uint64            `json:"sessions_started"`
	// SessionsEnded counts sessions that ran, by the outcome their
	// "session ended" line logs ("status 0", "client gone", ...).
	SessionsEnded map[string]uint64 `json:"sessions_ended"`
	BytesIn       uint64            `json:"bytes_in"`  // from clients, all sessions so far
	BytesOut      uint64            `json:"bytes_out"` // to clients, all sessions so far
}

// Reasons for a refusal, as Counters and the metrics name them: stable
// names for what the log says in words.
const (
	refusalUserNotAllowed = "user_not_allowed"
	refusalUnknownKey     = "unknown_key"
	refusalKeyExpired     = "key_expired"
	refusalFromNotAllowed = "from_not_allowed"
	refusalMethod         = "method_not_offered" // password, keyboard-interactive
	refusalNoAuth         = "no_accepted_authentication"
	refusalLoginGrace     = "login_grace_time"
	refusalMaxStartups    = "max_startups"
	refusalPerSource      = "per_source_max_startups"
	refusalMaxSessions    = "max_sessions"
)

// refusalReasons lists every reason, so that the metrics show each from
// the start, at 0.
var refusalReasons = [...]string{refusalUserNotAllowed, refusalUnknownKey, refusalKeyExpired, refusalFromNotAllowed,
	refusalMethod, refusalNoAuth, refusalLoginGrace, refusalMaxStartups, refusalPerSource, refusalMaxSessions}

// publicKeyRefusal names the reason publicKey logs in words: "user not
// allowed", or the one auth's Match gave (see its doc).
func publicKeyRefusal(why string) string {
	switch {
	case why == "user not allowed":
		return refusalUserNotAllowed
	case strings.HasPrefix(why, "key expired"):
		return refusalKeyExpired
	case strings.HasPrefix(why, "address not allowed"):
		return refusalFromNotAllowed
	}
	return refusalUnknownKey
}

// registry is what the status socket and the metrics report: the
// sessions running now and counters since the start. The Server keeps
// one; each event is recorded by one call where it is logged. The zero
// value is ready to use.
type registry struct {
	mu       sync.Mutex
	live     map[*liveSession]struct{}
	logins   uint64
	refusals map[string]uint64
	started  uint64
	ended    map[string]uint64
	// What ended sessions moved; running ones add their own counts.
	bytesIn, bytesOut uint64
}

// liveSession is a running session: what is fixed at its start, and the
// byte counts its pumps keep (startPumps' counting), read atomically.
type liveSession struct {
	info    SessionInfo
	in, out *atomic.Int64
}

func (r *registry) login() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.logins++
}

// refused counts a refusal for reason, one of the refusal* constants.
func (r *registry) refused(reason string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.refusals == nil {
		r.refusals = map[string]uint64{}
	}
	r.refusals[reason]++
}

// add records a session that now runs, with the counters its pumps keep.
func (r *registry) add(info SessionInfo, in, out *atomic.Int64) *liveSession {
	l := &liveSession{info: info, in: in, out: out}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.live == nil {
		r.live = map[*liveSession]struct{}{}
	}
	r.live[l] = struct{}{}
	r.started++
	return l
}

// end records how a running session ended; a session already ended, or
// that never ran (nil), is not counted again.
func (r *registry) end(l *liveSession, outcome string) {
	if l == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.live[l]; !ok {
		return
	}
	delete(r.live, l)
	if r.ended == nil {
		r.ended = map[string]uint64{}
	}
	r.ended[outcome]++
	r.bytesIn += uint64(l.in.Load())
	r.bytesOut += uint64(l.out.Load())
}

// snapshot returns the running sessions, oldest first, and the counters.
func (r *registry) snapshot() ([]SessionInfo, Counters) {
	r.mu.Lock()
	defer r.mu.Unlock()
	c := Counters{
		Logins: r.logins, Refusals: map[string]uint64{}, SessionsStarted: r.started,
		SessionsEnded: map[string]uint64{}, BytesIn: r.bytesIn, BytesOut: r.bytesOut,
	}
	for k, v := range r.refusals {
		c.Refusals[k] = v
	}
	for k, v := range r.ended {
		c.SessionsEnded[k] = v
	}
	sessions := make([]SessionInfo, 0, len(r.live))
	for l := range r.live {
		info := l.info
		info.BytesIn, info.BytesOut = l.in.Load(), l.out.Load()
		c.BytesIn += uint64(info.BytesIn)
		c.BytesOut += uint64(info.BytesOut)
		sessions = append(sessions, info)
	}
	slices.SortFunc(sessions, func(a, b SessionInfo) int {
		return cmp.Or(a.Started.Compare(b.Started), cmp.Compare(a.Pid, b.Pid), cmp.Compare(a.Remote, b.Remote))
	})
	return sessions, c
}

// maxStatusCommand bounds a session's command in the status: a command
// may be 64 KiB long.
const maxStatusCommand = 1024

// whatRuns is what a session's request runs, as the status shows it.
func whatRuns(r darlingexec.Request) (kind, command string) {
	if r.Shell {
		return "shell", "shell"
	}
	return "exec", truncate(r.Command, maxStatusCommand)
}

// statusInfo is what the status shows of the session, once it runs.
func (se *session) statusInfo() SessionInfo {
	info := SessionInfo{User: se.sc.User(), Remote: se.c.remote, Key: se.c.fingerprint(),
		Kind: se.kind, Command: se.command, Started: time.Now().Round(time.Millisecond)}
	if se.sftp {
		info.Kind, info.Command = "sftp", "sftp"
	} else if se.cmd != nil {
		info.Pid = se.cmd.Pid()
	}
	return info
}

// endedUnswept is the outcome the status counts for a session that ran
// but that sweep did not end: SFTP, or a panic.
func (se *session) endedUnswept(panicked bool) string {
	switch {
	case panicked:
		return "panic"
	case se.sftp:
		return "sftp ended"
	}
	return "ended"
}

// fingerprint is the SHA256 fingerprint of the key the connection logged
// in with, or "" before login.
func (c *conn) fingerprint() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.key == nil {
		return ""
	}
	return gossh.FingerprintSHA256(c.key.Key)
}

// status is the server's status now.
func (s *Server) status() *Status {
	st := &Status{}
	if info := s.info.Load(); info != nil {
		st.Server = *info
	}
	if pid, since, ok := s.launcher.Container(); ok {
		st.Container = ContainerInfo{Pid: pid, Since: since}
	}
	st.Pool.Size, st.Pool.Ready = s.launcher.PoolState()
	st.Sessions, st.Counters = s.reg.snapshot()
	return st
}

// serverInfo is the ServerInfo of a server listening on addr from now.
func (s *Server) serverInfo(addr string) *ServerInfo {
	return &ServerInfo{
		Listen: addr, HostKey: auth.AuthorizedKeyLine(s.hostKey.PublicKey()), HostAlias: s.opts.HostAlias,
		KnownHostsOut: s.opts.KnownHostsOut, AuthorizedKeys: s.opts.AuthorizedKeysPath, Prefix: s.opts.Prefix,
		Launcher: s.launcher.Path(), Started: time.Now().Round(time.Millisecond), Version: buildVersion(),
	}
}

// buildVersion is the module version the binary was built as, or the
// commit it was built from; "" if the toolchain recorded neither.
func buildVersion() string {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return ""
	}
	if v := info.Main.Version; v != "" && v != "(devel)" {
		return v
	}
	for _, s := range info.Settings {
		if s.Key == "vcs.revision" {
			return s.Value[:min(12, len(s.Value))]
		}
	}
	return ""
}

// statusSocketName is the status socket's name in the state directory.
const statusSocketName = "status.sock"

// statusTimeout bounds one status exchange, on either side.
const statusTimeout = 2 * time.Second

// maxStatusDoc bounds what a client reads of a status document.
const maxStatusDoc = 64 << 20

// maxSocketPath is the longest path a unix socket can be bound to
// (sun_path less its terminating NUL).
const maxSocketPath = 107

// monitors are the status socket and the metrics listener. Run opens
// them before the warm-up, so that a second server on the same state
// directory or metrics address fails before it warms anything; run
// serves them once the prefix is warm; Run closes them when it returns,
// which removes the socket.
// serve and close are called in that order, by one goroutine.
type monitors struct {
	status  *net.UnixListener // nil: no state directory
	metrics net.Listener      // nil: no metrics
	http    *http.Server      // the metrics' server, once served
	wg      sync.WaitGroup
}

// openMonitors opens what opts asks for.
func openMonitors(opts Options) (*monitors, error) {
	m := &monitors{}
	if opts.StateDir != "" {
		l, err := listenStatus(opts.StateDir)
		if err != nil {
			return nil, err
		}
		m.status = l
	}
	if opts.MetricsAddr != "" {
		l, err := net.Listen("tcp", opts.MetricsAddr)
		if err != nil {
			m.close()
			return nil, fmt.Errorf("metrics: listen %s: %w", opts.MetricsAddr, err)
		}
		m.metrics = l
	}
	return m, nil
}

// serve answers on the monitors for s until close.
func (m *monitors) serve(s *Server) {
	if m.status != nil {
		s.log.Info("serving status", "socket", m.status.Addr().String())
		m.wg.Go(func() { s.serveStatus(m.status) })
	}
	if m.metrics != nil {
		s.log.Info("serving metrics", "url", "http://"+m.metrics.Addr().String()+"/metrics")
		m.http = s.metricsServer()
		m.wg.Go(func() { s.serveMetrics(m.http, m.metrics) })
	}
}

// close stops answering, removes the socket and waits for the servers.
func (m *monitors) close() {
	if m.status != nil {
		m.status.Close()
	}
	switch {
	case m.http != nil:
		m.http.Close()
	case m.metrics != nil:
		m.metrics.Close()
	}
	m.wg.Wait()
}

// listenStatus makes the state directory (0700) if missing and listens on
// its status socket (0600). A socket nobody answers on is a dead server's
// and is replaced; one a server answers on is an error.
func listenStatus(dir string) (*net.UnixListener, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("state directory: %w", err)
	}
	path := filepath.Join(dir, statusSocketName)
	if len(path) > maxSocketPath {
		return nil, fmt.Errorf("status socket %s: the path is longer than %d bytes; choose a shorter --state-dir", path, maxSocketPath)
	}
	fi, err := os.Lstat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return nil, fmt.Errorf("status socket: %w", err)
	case fi.Mode().Type() != fs.ModeSocket:
		return nil, fmt.Errorf("status socket %s exists and is not a socket: remove it if nothing uses it", path)
	default:
		c, err := net.DialTimeout("unix", path, statusTimeout)
		if err == nil {
			c.Close()
			return nil, fmt.Errorf("another server uses %s (--state-dir): it answers on %s", dir, path)
		}
		if !errors.Is(err, syscall.ECONNREFUSED) {
			return nil, fmt.Errorf("status socket %s: %w", path, err)
		}
		// A socket whose server is gone.
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("remove the stale status socket: %w", err)
		}
	}
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("status socket: %w", err)
	}
	// Peers are checked by uid too (peerAllowed): the mode is not all
	// that keeps others out between bind and chmod.
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("status socket: %w", err)
	}
	return l, nil
}

// serveStatus answers each connection on l with the status until l is
// closed.
func (s *Server) serveStatus(l *net.UnixListener) {
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := l.AcceptUnix()
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil {
			// Out of file descriptors, say: wait rather than spin.
			s.log.Warn("status socket: accept", "err", err)
			time.Sleep(100 * time.Millisecond)
			continue
		}
		wg.Go(func() { s.answerStatus(c) })
	}
}

// answerStatus writes the status to c, if its peer is root or the
// server's own user, within statusTimeout, and closes it.
func (s *Server) answerStatus(c *net.UnixConn) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(statusTimeout))
	if uid, err := peerUID(c); err != nil || (uid != 0 && int(uid) != os.Getuid()) {
		s.log.Warn("status request refused", "uid", uid, "err", err)
		return
	}
	if err := json.NewEncoder(c).Encode(s.status()); err != nil {
		s.log.Debug("status request: write", "err", err)
	}
}

// peerUID returns the uid of the process at the other end of c.
func peerUID(c *net.UnixConn) (uint32, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return 0, err
	}
	var cred *unix.Ucred
	var cerr error
	if err := rc.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return 0, err
	}
	if cerr != nil {
		return 0, fmt.Errorf("SO_PEERCRED: %w", cerr)
	}
	return cred.Uid, nil
}

// QueryStatus asks the server whose state directory is stateDir.
func QueryStatus(ctx context.Context, stateDir string) (*Status, error) {
	b, err := QueryStatusJSON(ctx, stateDir)
	if err != nil {
		return nil, err
	}
	var st Status
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("status from %s: %w", filepath.Join(stateDir, statusSocketName), err)
	}
	return &st, nil
}

// QueryStatusJSON asks the server whose state directory is stateDir and
// returns its status document as it sent it.
func QueryStatusJSON(ctx context.Context, stateDir string) ([]byte, error) {
	path := filepath.Join(stateDir, statusSocketName)
	ctx, cancel := context.WithTimeout(ctx, statusTimeout)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	switch {
	case errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ECONNREFUSED):
		return nil, fmt.Errorf("no server answers on %s: is serve running with --state-dir %s?", path, stateDir)
	case errors.Is(err, fs.ErrPermission):
		return nil, fmt.Errorf("%w: the status is for root and the server's own user", err)
	case err != nil:
		return nil, fmt.Errorf("status: %w", err)
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	b, err := io.ReadAll(io.LimitReader(c, maxStatusDoc+1))
	switch {
	case err != nil && ctx.Err() != nil:
		return nil, fmt.Errorf("the server on %s did not answer in time (it answers once its prefix is warm): %w", path, context.Cause(ctx))
	case err != nil:
		return nil, fmt.Errorf("read status from %s: %w", path, err)
	case len(b) == 0:
		return nil, fmt.Errorf("the server on %s sent no status: it answers root and its own user only", path)
	case len(b) > maxStatusDoc:
		return nil, fmt.Errorf("the status from %s is larger than %d bytes", path, maxStatusDoc)
	}
	return b, nil
}
