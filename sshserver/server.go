// Package sshserver is darling-sshd's SSH side: the listener, the SSH
// configuration, authentication against the authorized keys, and session
// channels whose commands darlingexec runs inside the Darling prefix. It
// knows SSH and wires auth and darlingexec together; it knows nothing of
// Darling's quirks.
package sshserver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"os/user"
	"runtime/debug"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	gliderssh "github.com/gliderlabs/ssh"
	gossh "golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"

	"github.com/darling-sshd/darling-sshd/auth"
	"github.com/darling-sshd/darling-sshd/darlingexec"
)

// Options is everything `darling-sshd serve` is configured with.
type Options struct {
	Listen             string
	Prefix             string
	Darling            string // launcher path or name looked up in PATH
	PrefixStyle        darlingexec.Style
	LauncherLog        string // the warm-up launcher's output; "" is P.launcher.log
	HostKeyPath        string
	AuthorizedKeysPath string
	AllowUsers         []string
	AcceptEnv          []string // names or globs clients may set, beyond DefaultAcceptEnv
	KillGrace          time.Duration
	WarmTimeout        time.Duration
	LoginGraceTime     time.Duration // a connection not logged in by then is closed
	ShutdownGrace      time.Duration // how long running sessions may finish after SIGTERM
	MaxStartups        MaxStartups   // limit on unauthenticated connections
	MaxAuthTries       int           // authentication attempts per connection
	MaxSessions        int           // session channels open at once per connection
	MaxExec            int           // exec sessions running at once; 0: no limit
	KeepaliveInterval  time.Duration // 0: no keepalives
	KeepaliveCountMax  int           // unanswered keepalives before the connection is closed
	PprofAddr          string        // if set, serve Go's profiles there
	// Ready, if set, is called once the server accepts sessions (after
	// the warm-up): systemd's READY=1.
	Ready func()
	// Reload receives a value for each SIGHUP: reload the authorized keys.
	Reload <-chan os.Signal
	// KnownHostsOut, if set, is written at start with lines trusting the
	// host key for HostAlias and for the address clients dial.
	KnownHostsOut string
	HostAlias     string
	Log           *slog.Logger
}

// Server is a running darling-sshd.
type Server struct {
	opts     Options
	log      *slog.Logger
	hostKey  gossh.Signer
	keys     atomic.Pointer[auth.AuthorizedKeys] // swapped by ReloadKeys
	launcher *darlingexec.Launcher
	ssh      *gliderssh.Server
	// acceptEnv holds the names and globs of variables clients may set.
	acceptEnv []string
	// preauth maps a remote address to its connection's login state.
	preauth sync.Map
	// home is where SFTP starts: the server user's home in the prefix.
	home string
	// unauthed counts connections that have not logged in.
	unauthed atomic.Int64
	rand     func(int) int
	// perConn holds each connection's state once it has a session.
	perConn sync.Map // *gossh.ServerConn -> *connState
	// execSlots bounds running exec sessions (--max-exec); nil: no bound.
	execSlots chan struct{}
	// trim returns memory to the kernel when connections stop coming.
	trim *idleTrim

	// ctx is cancelled when the server shuts down; running sessions then
	// end with exit status 255.
	ctx    context.Context
	cancel context.CancelFunc

	mu      sync.Mutex
	closing bool
	runs    sync.WaitGroup // running session commands
}

// New loads the keys and finds the launcher. It does not warm the prefix
// or listen yet.
func New(opts Options) (*Server, error) {
	log := opts.Log
	if log == nil {
		log = slog.Default()
	}
	if opts.LoginGraceTime <= 0 {
		opts.LoginGraceTime = 30 * time.Second
	}
	if opts.MaxAuthTries <= 0 {
		opts.MaxAuthTries = 6
	}
	if opts.MaxSessions <= 0 {
		opts.MaxSessions = 10
	}
	hostKey, err := auth.LoadOrGenerateHostKey(opts.HostKeyPath)
	if err != nil {
		return nil, err
	}
	keys, err := loadKeys(opts.AuthorizedKeysPath, log)
	if err != nil {
		return nil, err
	}
	launcher, err := NewLauncher(opts.Darling, opts.Prefix, opts.PrefixStyle, opts.LauncherLog, opts.WarmTimeout, log)
	if err != nil {
		return nil, err
	}
	launcher.KillGrace = opts.KillGrace
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{
		opts:      opts,
		log:       log,
		hostKey:   hostKey,
		launcher:  launcher,
		acceptEnv: append(DefaultAcceptEnv(), opts.AcceptEnv...),
		home:      homeDir(),
		rand:      rand.IntN,
		ctx:       ctx,
		cancel:    cancel,
		trim:      newIdleTrim(trimDelay, debug.FreeOSMemory),
	}
	s.keys.Store(keys)
	if opts.MaxExec > 0 {
		s.execSlots = make(chan struct{}, opts.MaxExec)
	}
	s.ssh = &gliderssh.Server{
		HostSigners:              []gliderssh.Signer{hostKey},
		Version:                  "darling-sshd",
		PublicKeyHandler:         s.publicKey,
		ServerConfigCallback:     s.serverConfig,
		ChannelHandlers:          map[string]gliderssh.ChannelHandler{"session": s.handleSession},
		RequestHandlers:          map[string]gliderssh.RequestHandler{},
		SubsystemHandlers:        map[string]gliderssh.SubsystemHandler{},
		ConnCallback:             s.connCallback,
		ConnectionFailedCallback: s.connectionFailed,
	}
	return s, nil
}

// loadKeys loads the authorized keys, logging the lines it ignores.
func loadKeys(path string, log *slog.Logger) (*auth.AuthorizedKeys, error) {
	keys, err := auth.LoadAuthorizedKeys(path)
	if err != nil {
		return nil, err
	}
	for _, r := range keys.Rejected {
		log.Warn("authorized key line ignored", "file", keys.Path, "line", r.Line, "reason", r.Reason)
	}
	return keys, nil
}

// ReloadKeys reads the authorized keys file again; running sessions are
// not touched. If the file cannot be used, the keys in force stay.
func (s *Server) ReloadKeys() {
	keys, err := loadKeys(s.opts.AuthorizedKeysPath, s.log)
	if err != nil {
		s.log.Error("reload authorized keys failed; keeping the keys in force", "err", err)
		return
	}
	s.keys.Store(keys)
	s.log.Info("authorized keys reloaded", "file", s.opts.AuthorizedKeysPath, "keys", keys.Len())
}

// NewLauncher finds the launcher and checks the prefix path.
func NewLauncher(darling, prefix string, style darlingexec.Style, launcherLog string, warmTimeout time.Duration, log *slog.Logger) (*darlingexec.Launcher, error) {
	path, err := exec.LookPath(darling)
	if err != nil {
		return nil, fmt.Errorf("find launcher %q: %w (install Darling or pass --darling)", darling, err)
	}
	if err := darlingexec.CheckPrefix(prefix); err != nil {
		return nil, err
	}
	return &darlingexec.Launcher{
		Path: path, Prefix: prefix, Style: style, LogPath: launcherLog, WarmTimeout: warmTimeout,
		KillGrace: 5 * time.Second, Log: log, HostEnv: hostEnv(),
	}, nil
}

// hostEnv returns HOME and PATH of the server's own user, which Darling
// needs to start its container.
func hostEnv() []string {
	home := os.Getenv("HOME")
	if home == "" {
		if u, err := user.Current(); err == nil {
			home = u.HomeDir
		}
	}
	path := os.Getenv("PATH")
	if path == "" {
		path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	}
	return []string{"HOME=" + home, "PATH=" + path}
}

// serverConfig sets the algorithms explicitly (x/crypto's defaults include
// SHA-1 and NIST choices) and logs authentication methods we never offer.
func (s *Server) serverConfig(ctx gliderssh.Context) *gossh.ServerConfig {
	pa, _ := ctx.Value(preauthKey{}).(*preauth)
	return &gossh.ServerConfig{
		Config: gossh.Config{
			KeyExchanges: []string{gossh.KeyExchangeMLKEM768X25519, gossh.KeyExchangeCurve25519},
			Ciphers:      []string{gossh.CipherAES128GCM, gossh.CipherAES256GCM, gossh.CipherChaCha20Poly1305},
			MACs:         []string{gossh.HMACSHA256ETM, gossh.HMACSHA512ETM},
		},
		// Only keys and signature algorithms without SHA-1.
		PublicKeyAuthAlgorithms: []string{gossh.KeyAlgoED25519, gossh.KeyAlgoSKED25519, gossh.KeyAlgoECDSA256,
			gossh.KeyAlgoECDSA384, gossh.KeyAlgoECDSA521, gossh.KeyAlgoSKECDSA256, gossh.KeyAlgoRSASHA256, gossh.KeyAlgoRSASHA512},
		VerifiedPublicKeyCallback: s.verifiedKey,
		MaxAuthTries:              s.opts.MaxAuthTries,
		AuthLogCallback:           s.authLog(pa),
	}
}

// publicKey decides public key authentication: the user must be allowed
// and the key listed in the authorized keys file.
func (s *Server) publicKey(ctx gliderssh.Context, key gliderssh.PublicKey) bool {
	refuse := func(reason string) bool {
		s.log.Info("login refused", "reason", reason, "user", ctx.User(),
			"remote", ctx.RemoteAddr().String(), "key", gossh.FingerprintSHA256(key))
		return false
	}
	if !slices.Contains(s.opts.AllowUsers, ctx.User()) {
		return refuse("user not allowed")
	}
	ak := s.keys.Load().Lookup(key)
	switch {
	case ak == nil:
		return refuse("key not authorized")
	case ak.Options.Expired(time.Now()):
		return refuse(fmt.Sprintf("key expired (expiry-time, line %d)", ak.Line))
	case !ak.Options.FromAllows(ctx.RemoteAddr()):
		return refuse(fmt.Sprintf("address not allowed by from= (line %d)", ak.Line))
	}
	// x/crypto checks a security key's touch against the Permissions this
	// callback returns, and gliderlabs returns one object per connection:
	// it is set for the key of this call, which x/crypto (one-entry
	// cache) calls last for the key it then verifies.
	perms := ctx.Permissions()
	if perms.Extensions == nil {
		perms.Extensions = map[string]string{}
	}
	if ak.Options.NoTouchRequired {
		perms.Extensions[noTouchRequired] = ""
	} else {
		delete(perms.Extensions, noTouchRequired)
	}
	return true
}

// noTouchRequired is the Permissions extension x/crypto reads.
const noTouchRequired = "no-touch-required"

// keyOptionsExt carries the authenticated key's options to the sessions.
const keyOptionsExt = "darling-sshd-key-options"

// verifiedKey runs once the client proved it holds key: the connection's
// Permissions become a fresh object with that key's options, so nothing
// of another key offered on the same connection can leak into them.
func (s *Server) verifiedKey(conn gossh.ConnMetadata, key gossh.PublicKey, _ *gossh.Permissions, _ string) (*gossh.Permissions, error) {
	ak := s.keys.Load().Lookup(key)
	if ak == nil {
		return nil, errors.New("key no longer authorized")
	}
	b, err := json.Marshal(ak.Options)
	if err != nil {
		return nil, err
	}
	s.log.Info("login", "user", conn.User(), "remote", conn.RemoteAddr().String(),
		"key", gossh.FingerprintSHA256(key), "line", ak.Line)
	return &gossh.Permissions{Extensions: map[string]string{keyOptionsExt: string(b)}}, nil
}

// keyOptions returns the options of the key a connection logged in with.
func keyOptions(conn *gossh.ServerConn) (auth.KeyOptions, error) {
	var o auth.KeyOptions
	if conn.Permissions == nil {
		return o, errors.New("no key options")
	}
	err := json.Unmarshal([]byte(conn.Permissions.Extensions[keyOptionsExt]), &o)
	return o, err
}

// Warm starts the prefix's container before any session can be handed a
// cold start.
func (s *Server) Warm(ctx context.Context) error {
	return s.launcher.Warm(ctx)
}

// Serve accepts connections on l until Close.
func (s *Server) Serve(l net.Listener) error {
	err := s.ssh.Serve(l)
	if errors.Is(err, gliderssh.ErrServerClosed) {
		return nil
	}
	return err
}

// Run listens, warms the prefix, logs "listening" with the address, and
// serves until ctx is done; then it ends what runs and returns.
func Run(ctx context.Context, opts Options) error {
	// File descriptors the server inherited without close-on-exec would
	// reach every launcher, and through a cold start the container and
	// every command, holding the parent's pipes open.
	_ = unix.CloseRange(3, ^uint(0), unix.CLOSE_RANGE_CLOEXEC)
	s, err := New(opts)
	if err != nil {
		return err
	}
	// Listen first, so a bad address fails before a warm-up; connections
	// wait in the backlog until the prefix is warm.
	l, err := net.Listen("tcp", opts.Listen)
	if err != nil {
		return fmt.Errorf("listen %s: %w", opts.Listen, err)
	}
	defer l.Close()
	if opts.PprofAddr != "" {
		pl, err := s.servePprof(opts.PprofAddr)
		if err != nil {
			return err
		}
		defer pl.Close()
	}
	if err := s.Warm(ctx); err != nil {
		return err
	}
	if opts.KnownHostsOut != "" {
		host, port, err := auth.ClientHost(l.Addr().String())
		if err == nil {
			err = auth.WriteKnownHosts(opts.KnownHostsOut, auth.KnownHosts(s.hostKey.PublicKey(), opts.HostAlias, host, port))
		}
		if err != nil {
			return err
		}
	}
	s.log.Info("listening", "addr", l.Addr().String(), "prefix", opts.Prefix,
		"launcher", s.launcher.Path, "host_key", gossh.FingerprintSHA256(s.hostKey.PublicKey()))
	errc := make(chan error, 1)
	go func() { errc <- s.Serve(l) }()
	if opts.Ready != nil {
		opts.Ready()
	}
	for {
		select {
		case err = <-errc:
		case <-opts.Reload:
			s.ReloadKeys()
			continue
		case <-ctx.Done():
			s.log.Info("shutting down")
		}
		break
	}
	s.Close()
	return err
}

// Close stops listening, lets running sessions finish within the
// shutdown grace, then ends what remains (exit status 255 and a line on
// stderr, their processes as on disconnect) and closes every connection.
func (s *Server) Close() {
	// Stop accepting. A connection in its handshake goes on; if it opens
	// a session now, the session is refused with a message.
	_ = s.ssh.Shutdown(doneContext())
	s.mu.Lock()
	s.closing = true
	s.mu.Unlock()
	done := make(chan struct{})
	go func() {
		s.runs.Wait()
		close(done)
	}()
	if s.opts.ShutdownGrace > 0 {
		s.log.Info("waiting for running sessions", "grace", s.opts.ShutdownGrace)
		select {
		case <-done:
		case <-time.After(s.opts.ShutdownGrace):
			s.log.Info("shutdown grace over; ending running sessions")
		}
	}
	s.cancel()
	s.trim.stop()
	// A client that does not read can hold a session's last writes;
	// closing its connection releases them.
	select {
	case <-done:
	case <-time.After(s.opts.KillGrace + closeMargin):
		s.log.Warn("sessions still running; closing their connections")
	}
	_ = s.ssh.Close()
	<-done
}

// closeMargin is how long Close waits, beyond the kill grace, for sessions
// to end on their own before it closes their connections.
const closeMargin = 5 * time.Second

// doneContext is an already cancelled context: Shutdown then closes the
// listeners and returns without waiting for connections.
func doneContext() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
}

// startRun registers a session command; false once the server is closing.
func (s *Server) startRun() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return false
	}
	s.runs.Add(1)
	return true
}
