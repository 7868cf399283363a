// Package sshserver is darling-sshd's SSH side: the listener, the SSH
// configuration, authentication against the authorized keys, and session
// channels whose commands darlingexec runs inside the Darling prefix. It
// knows SSH and wires auth and darlingexec together; it knows nothing of
// Darling's quirks.
package sshserver

import (
	"context"
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

	"github.com/darling-sshd/darling-sshd/auth"
	"github.com/darling-sshd/darling-sshd/darlingexec"
)

// Server is a running darling-sshd.
type Server struct {
	opts     Options
	log      *slog.Logger
	hostKey  gossh.Signer
	keys     atomic.Pointer[auth.AuthorizedKeys] // swapped by ReloadKeys
	launcher Launcher
	ssh      *gliderssh.Server
	// acceptEnv holds the names and globs of variables clients may set.
	acceptEnv []string
	// home is where SFTP starts: the server user's home in the prefix.
	home string
	// unauthed counts connections that have not logged in.
	unauthed atomic.Int64
	watching atomic.Bool // noticeContainerLoss is watching the container
	sources  sources     // unauthenticated connections by source (PerSourceMaxStartups)
	rand     func(int) int
	// execSlots bounds running exec sessions (--max-exec); nil: no bound.
	execSlots chan struct{}
	// trim returns memory to the kernel when connections stop coming.
	trim *idleTrim
	// reg is what the status socket and the metrics report; info is
	// their ServerInfo, set once the server listens.
	reg  registry
	info atomic.Pointer[ServerInfo]
	// mon, set by Run, is served once the prefix is warm.
	mon *monitors

	// ctx is cancelled when the server shuts down; running sessions then
	// end with exit status 255.
	ctx    context.Context
	cancel context.CancelFunc

	mu        sync.Mutex
	closing   bool
	listeners []net.Listener // what Serve accepts on, closed by Close
	runs      sync.WaitGroup // running session commands
	conns     int            // logged-in connections not yet closed
	connsGone chan struct{}  // closed when conns drops to 0; see connsClosed

	// hook, set only by tests, is called where a library calls into
	// the server (see at); it may panic.
	hook atomic.Pointer[hookFunc]
}

// hookFunc is a test's hook: where the server was entered, and the
// remote address of the connection it was entered for ("" if none).
type hookFunc func(where, remote string)

// New checks the options, loads the keys and finds the launcher. It does
// not warm the prefix or listen yet.
func New(opts Options) (*Server, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	l, err := NewLauncher(opts)
	if err != nil {
		return nil, err
	}
	return newServer(opts, darling{l})
}

// newServer builds a server that starts its commands with launcher.
func newServer(opts Options, launcher Launcher) (*Server, error) {
	hostKey, err := auth.LoadOrGenerateHostKey(opts.HostKeyPath)
	if err != nil {
		return nil, err
	}
	keys, err := loadKeys(opts.AuthorizedKeysPath, opts.Log)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{
		opts:      opts,
		log:       opts.Log,
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

// NewLauncher finds the launcher and checks the prefix path, with the
// launcher's part of opts (init uses it too).
func NewLauncher(opts Options) (*darlingexec.Launcher, error) {
	path, err := exec.LookPath(opts.Darling)
	if err != nil {
		return nil, fmt.Errorf("find launcher %q: %w (install Darling or pass --darling)", opts.Darling, err)
	}
	if err := darlingexec.CheckPrefix(opts.Prefix); err != nil {
		return nil, err
	}
	log := opts.Log
	if log == nil {
		log = slog.Default()
	}
	return &darlingexec.Launcher{
		Path: path, Prefix: opts.Prefix, Style: opts.PrefixStyle, LogPath: opts.LauncherLog,
		WarmTimeout: opts.WarmTimeout, KillGrace: opts.KillGrace, Log: log, HostEnv: hostEnv(),
		Cgroups: opts.Cgroups,
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
// SHA-1 and NIST choices) and ties authentication to the connection.
func (s *Server) serverConfig(ctx gliderssh.Context) (cfg *gossh.ServerConfig) {
	c := connOf(ctx)
	var remote string // gliderlabs sets ctx.RemoteAddr only after the handshake
	if c != nil {
		remote = c.remote
	}
	log := s.log.With("remote", remote)
	defer contain(log, "server config callback", func() {
		// gliderlabs adds the host key to what it gets back: a config
		// that lets no key in, on a connection that is closed.
		cfg = &gossh.ServerConfig{VerifiedPublicKeyCallback: func(gossh.ConnMetadata, gossh.PublicKey, *gossh.Permissions, string) (*gossh.Permissions, error) {
			return nil, errors.New("refused")
		}}
		c.abort()
	})
	s.at("config", remote)
	return &gossh.ServerConfig{
		Config: gossh.Config{
			KeyExchanges: []string{gossh.KeyExchangeMLKEM768X25519, gossh.KeyExchangeCurve25519},
			Ciphers:      []string{gossh.CipherAES128GCM, gossh.CipherAES256GCM, gossh.CipherChaCha20Poly1305},
			MACs:         []string{gossh.HMACSHA256ETM, gossh.HMACSHA512ETM},
		},
		// Only keys and signature algorithms without SHA-1.
		PublicKeyAuthAlgorithms: []string{gossh.KeyAlgoED25519, gossh.KeyAlgoSKED25519, gossh.KeyAlgoECDSA256,
			gossh.KeyAlgoECDSA384, gossh.KeyAlgoECDSA521, gossh.KeyAlgoSKECDSA256, gossh.KeyAlgoRSASHA256, gossh.KeyAlgoRSASHA512},
		VerifiedPublicKeyCallback: func(md gossh.ConnMetadata, key gossh.PublicKey, _ *gossh.Permissions, _ string) (perms *gossh.Permissions, err error) {
			defer contain(log, "verified key callback", func() {
				perms, err = nil, errors.New("refused")
				c.abort()
			})
			s.at("verified", remote)
			return s.verifiedKey(c, md, key)
		},
		MaxAuthTries: s.opts.MaxAuthTries,
		AuthLogCallback: func(md gossh.ConnMetadata, method string, err error) {
			defer contain(log, "authentication log callback", c.abort)
			s.at("authlog", remote)
			s.authLog(c, md, method, err)
		},
	}
}

// authLog records authentication attempts; a success ends the login phase.
func (s *Server) authLog(c *conn, md gossh.ConnMetadata, method string, err error) {
	if err == nil {
		c.authed()
		return
	}
	c.attempt(md.User(), method)
	if method == "password" || method == "keyboard-interactive" {
		s.reg.refused(refusalMethod)
		s.log.Info("login refused", "reason", method+" authentication is not offered",
			"user", md.User(), "remote", c.remote)
	}
}

// connectionFailed logs why a handshake ended; the connection's close
// logs what that meant for its login.
func (s *Server) connectionFailed(nc net.Conn, err error) {
	defer contain(s.log.With("remote", nc.RemoteAddr().String()), "connection failed callback", nil)
	s.at("failed", nc.RemoteAddr().String())
	s.log.Debug("handshake ended", "remote", nc.RemoteAddr().String(), "err", err)
}

// publicKey decides public key authentication: the user must be allowed
// and the key listed in the authorized keys file. The entry found is the
// one the login uses (see conn.offer).
func (s *Server) publicKey(ctx gliderssh.Context, key gliderssh.PublicKey) (ok bool) {
	defer contain(s.log.With("remote", ctx.RemoteAddr().String(), "user", ctx.User()), "public key callback", func() {
		ok = false
		connOf(ctx).abort()
	})
	s.at("publickey", ctx.RemoteAddr().String())
	refuse := func(reason string) bool {
		s.reg.refused(publicKeyRefusal(reason))
		s.log.Info("login refused", "reason", reason, "user", ctx.User(),
			"remote", ctx.RemoteAddr().String(), "key", gossh.FingerprintSHA256(key))
		return false
	}
	if !slices.Contains(s.opts.AllowUsers, ctx.User()) {
		return refuse("user not allowed")
	}
	// As in OpenSSH, the first line for the key that allows the login
	// decides (its command=, its restrictions).
	ak, why := s.keys.Load().Match(key, ctx.RemoteAddr(), time.Now())
	if ak == nil {
		return refuse(why)
	}
	connOf(ctx).offer(key, ak)
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

// verifiedKey runs once the client proved it holds key: the connection
// logs in with the entry publicKey found for that key.
func (s *Server) verifiedKey(c *conn, md gossh.ConnMetadata, key gossh.PublicKey) (*gossh.Permissions, error) {
	ak := c.login(key)
	if ak == nil {
		return nil, errors.New("key not accepted on this connection")
	}
	s.reg.login()
	s.log.Info("login", "user", md.User(), "remote", c.remote,
		"key", gossh.FingerprintSHA256(key), "line", ak.Line)
	return &gossh.Permissions{}, nil
}

// Serve accepts connections on l until Close.
func (s *Server) Serve(l net.Listener) error {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		return nil
	}
	s.listeners = append(s.listeners, l)
	s.mu.Unlock()
	err := s.ssh.Serve(l)
	s.mu.Lock()
	closing := s.closing
	s.mu.Unlock()
	if errors.Is(err, gliderssh.ErrServerClosed) || (closing && errors.Is(err, net.ErrClosed)) {
		return nil
	}
	return err
}

// Run listens, warms the prefix, logs "listening" with the address, and
// serves until ctx is done; then it ends what runs and returns.
func Run(ctx context.Context, opts Options) error {
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
	// The status socket and the metrics address too: a second server on
	// the same state directory fails here, not after its warm-up.
	if s.mon, err = openMonitors(opts); err != nil {
		return err
	}
	defer s.mon.close()
	err = s.run(ctx, l)
	if opts.StopContainer {
		ctx, cancel := context.WithTimeout(context.Background(), opts.WarmTimeout)
		defer cancel()
		stopped, serr := s.launcher.Shutdown(ctx)
		switch {
		case serr != nil:
			s.log.Warn("stopping the prefix's container", "err", serr)
		case stopped:
			s.log.Info("stopped the prefix's container this server had started", "prefix", opts.Prefix)
		default:
			s.log.Info("left the prefix's container running: this server did not start it", "prefix", opts.Prefix)
		}
	}
	return err
}

// run warms the prefix and serves on l until ctx is done.
func (s *Server) run(ctx context.Context, l net.Listener) error {
	if err := s.launcher.Warm(ctx); err != nil {
		return err
	}
	// Launchers started ahead of exec sessions (--prespawn) are not
	// sessions; they end after the sessions do.
	s.launcher.StartPool(s.opts.Prespawn)
	defer s.launcher.Close()
	if s.opts.KnownHostsOut != "" {
		host, port, err := auth.ClientHost(l.Addr().String())
		if err == nil {
			err = auth.WriteKnownHosts(s.opts.KnownHostsOut, auth.KnownHosts(s.hostKey.PublicKey(), s.opts.HostAlias, host, port))
		}
		if err != nil {
			return err
		}
	}
	s.info.Store(s.serverInfo(l.Addr().String()))
	if s.mon != nil {
		s.mon.serve(s)
	}
	s.log.Info("listening", "addr", l.Addr().String(), "prefix", s.opts.Prefix,
		"launcher", s.launcher.Path(), "host_key", gossh.FingerprintSHA256(s.hostKey.PublicKey()))
	errc := make(chan error, 1)
	go func() { errc <- s.Serve(l) }()
	if s.opts.Ready != nil {
		s.opts.Ready()
	}
	var err error
	for done := false; !done; {
		select {
		case err = <-errc:
			done = true
		case <-s.opts.Reload:
			s.ReloadKeys()
		case <-ctx.Done():
			s.log.Info("shutting down")
			done = true
		}
	}
	s.Close()
	return err
}

// Close stops listening, lets running sessions finish within the
// shutdown grace, then ends what remains (exit status 255 and a line on
// stderr, their processes as on disconnect), lets clients close their
// connections for a moment (letClientsClose) and closes the rest.
func (s *Server) Close() {
	// Stop accepting. A connection in its handshake goes on; if it opens
	// a session now, the session is refused with a message.
	// The server closes its listeners itself: it does not use gliderlabs'
	// Shutdown (see letClientsClose).
	s.mu.Lock()
	s.closing = true
	for _, l := range s.listeners {
		_ = l.Close()
	}
	s.mu.Unlock()
	done := make(chan struct{})
	go func() {
		s.runs.Wait()
		close(done)
	}()
	hurried := false
	if s.opts.ShutdownGrace > 0 {
		s.log.Info("waiting for running sessions", "grace", s.opts.ShutdownGrace)
		select {
		case <-done:
		case <-time.After(s.opts.ShutdownGrace):
			s.log.Info("shutdown grace over; ending running sessions")
		case <-s.opts.Hurry:
			hurried = true
			s.log.Info("asked again to stop; ending running sessions now")
		}
	}
	s.cancel()
	s.trim.stop()
	// A client that does not read can hold a session's last writes;
	// closing its connection releases them.
	ended := false
	select {
	case <-done:
		ended = true
	case <-time.After(s.opts.KillGrace + closeMargin):
		s.log.Warn("sessions still running; closing their connections")
	}
	if ended && !hurried {
		s.letClientsClose()
	}
	_ = s.ssh.Close()
	<-done
}

// letClientsClose gives the clients up to closeLinger to close their
// connections themselves, as an OpenSSH client does right after its last
// channel closes: it sends its channel close, then its disconnect, and
// closes. Closing a connection under a client still sending them made the
// client fail ("client_loop: send disconnect: Broken pipe", status 255)
// although its command had succeeded: at once through a ProxyCommand or
// ProxyJump, which ends with the server's close. Logged-in connections
// only; one a client keeps open (a ControlMaster with no session) is
// closed after the wait. A second signal (Hurry) ends the wait.
//
// The server counts the connections itself (connIn, connOut) rather than
// use gliderlabs' Shutdown: that waits on a WaitGroup a connection
// finishing its handshake can still Add to, a race the race detector
// reports (gliderlabs/ssh issue 117).
func (s *Server) letClientsClose() {
	s.log.Debug("letting clients close their connections", "for", closeLinger)
	select {
	case <-s.connsClosed():
	case <-s.opts.Hurry: // nil: never
		s.log.Info("asked again to stop; closing the connections now")
	case <-time.After(closeLinger):
		s.log.Info("closing the connections their clients did not close", "waited", closeLinger)
	}
}

// connIn counts a connection that logged in; connOut counts it out as it
// closes. The conn calls both under its own lock, which orders them.
func (s *Server) connIn() {
	s.mu.Lock()
	s.conns++
	s.mu.Unlock()
}

func (s *Server) connOut() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.conns--
	if s.conns == 0 && s.connsGone != nil {
		close(s.connsGone)
		s.connsGone = nil
	}
}

// connsClosed returns a channel that is closed once no logged-in
// connection is open.
func (s *Server) connsClosed() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conns == 0 {
		ch := make(chan struct{})
		close(ch)
		return ch
	}
	if s.connsGone == nil {
		s.connsGone = make(chan struct{})
	}
	return s.connsGone
}

// noticeContainerLoss logs that the prefix's container is gone, after a
// session failed as Darling's launcher fails when it loses its container:
// status 1, without a word. The container's last process may leave /proc
// a moment after the launcher exited, so it is watched for up to
// containerGoneWait, in the background: the session does not wait. One
// watch at a time.
func (s *Server) noticeContainerLoss() {
	if !s.watching.CompareAndSwap(false, true) {
		return
	}
	go func() {
		defer s.watching.Store(false)
		defer contain(s.log, "container watch", nil)
		if s.launcher.ContainerGone(s.ctx, containerGoneWait) && s.ctx.Err() == nil {
			s.log.Warn("the prefix's container is gone; the next session warms it again", "prefix", s.opts.Prefix)
		}
	}()
}

// containerGoneWait bounds how long noticeContainerLoss waits for the
// container to go after a session failed.
const containerGoneWait = 2 * time.Second

// closeLinger bounds how long Close waits, after the last session ended,
// for clients to close their connections.
const closeLinger = 2 * time.Second

// closeMargin is how long Close waits, beyond the kill grace, for sessions
// to end on their own before it closes their connections.
const closeMargin = 5 * time.Second

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
