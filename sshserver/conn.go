package sshserver

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	gliderssh "github.com/gliderlabs/ssh"
	gossh "golang.org/x/crypto/ssh"

	"github.com/darling-sshd/darling-sshd/auth"
)

// conn is what the server keeps of one connection, from accept to close.
// It lives in the connection's context, as tailscale's ssh/tailssh keeps
// its conn, so no table keyed by address or connection is needed.
type conn struct {
	s      *Server
	remote string
	nc     net.Conn

	loginTimer *time.Timer  // the login grace; stopped at login
	unauthed   sync.Once    // counted out of the unauthenticated connections
	source     netip.Prefix // what Server.sources counts it under; zero: not counted there

	mu       sync.Mutex
	user     string                         // the name it tried to log in as
	methods  []string                       // the methods it tried, for the log
	offered  map[string]*auth.AuthorizedKey // keys publicKey accepted, by their wire form
	key      *auth.AuthorizedKey            // the key it logged in with; fixed once set
	loggedIn bool
	ended    bool // the connection has closed, or keepalives are closing it
	closing  bool // countOut has run: a login no longer counts in (Server.connIn)

	sessions atomic.Int32 // session channels open

	// Keepalives run from a timer: no goroutine waits between probes.
	sc      *gossh.ServerConn // set with the first session
	ka      *time.Timer
	pending bool // a probe is unanswered
	missed  int  // probes left unanswered in a row
}

type connKey struct{}

// connOf returns the connection's state from its context.
func connOf(ctx gliderssh.Context) *conn {
	c, _ := ctx.Value(connKey{}).(*conn)
	return c
}

// logger returns the server's logger with the connection's fields.
func (c *conn) logger() *slog.Logger { return c.s.log.With("remote", c.remote) }

// abort ends the connection: its socket is closed, and the SSH
// connection on it fails.
func (c *conn) abort() {
	if c != nil {
		c.nc.Close()
	}
}

// connCallback admits a connection (see admit), keeps its state in its
// context and starts its login grace time: a connection that has not
// logged in by then is closed, as sshd's LoginGraceTime does. A timer,
// not a deadline: gliderlabs resets the conn's deadlines on every read
// and write.
func (s *Server) connCallback(ctx gliderssh.Context, nc net.Conn) (ret net.Conn) {
	remote := nc.RemoteAddr().String()
	defer contain(s.log.With("remote", remote), "connection callback", func() {
		// gliderlabs closes a connection it gets nil for without ending
		// its context, and the close path would never run: hand it back
		// closed, so that its handshake fails and the path runs.
		nc.Close()
		ret = nc
	})
	s.at("conn", remote)
	src, ok := s.admit(nc.RemoteAddr())
	if !ok {
		return nil
	}
	s.trim.opened(ctx)
	c := &conn{s: s, remote: remote, nc: nc, source: src, offered: map[string]*auth.AuthorizedKey{}}
	ctx.SetValue(connKey{}, c)
	c.loginTimer = time.AfterFunc(s.opts.LoginGraceTime, c.loginGraceOver)
	context.AfterFunc(ctx, c.closed)
	// The client's first line is checked as sshd checks it (version.go).
	return &identConn{Conn: nc, r: newRawReader(nc), log: c.logger(), hook: func(where string) { s.at(where, remote) }}
}

// admit decides whether a new connection from ra may try to log in:
// PerSourceMaxStartups first, so that a source at its limit takes no
// share of MaxStartups, then MaxStartups' random early drop. An admitted
// connection counts against both until it logs in or closes
// (conn.leaveUnauthed); src is what it counts under by source, the zero
// Prefix if it does not.
func (s *Server) admit(ra net.Addr) (src netip.Prefix, ok bool) {
	if limit := s.opts.PerSourceMaxStartups; limit > 0 {
		src = sourceOf(ra, s.opts.PerSourceExemptLoopback)
		if src.IsValid() && !s.sources.enter(src, limit) {
			s.reg.refused(refusalPerSource)
			s.log.Info("connection dropped", "reason", "too many unauthenticated connections from this source (per-source-max-startups)",
				"remote", ra.String(), "source", src, "unauthenticated", limit)
			return netip.Prefix{}, false
		}
	}
	if n := s.unauthed.Add(1); s.opts.MaxStartups.drop(int(n)-1, s.rand) {
		s.unauthed.Add(-1)
		if src.IsValid() {
			s.sources.leave(src)
		}
		s.reg.refused(refusalMaxStartups)
		s.log.Info("connection dropped", "reason", "too many unauthenticated connections (max-startups)",
			"remote", ra.String(), "unauthenticated", n-1)
		return netip.Prefix{}, false
	}
	return src, true
}

func (c *conn) loginGraceOver() {
	defer contain(c.logger(), "login grace timer", c.abort)
	c.s.at("logingrace", c.remote)
	c.mu.Lock()
	in := c.loggedIn
	c.mu.Unlock()
	if !in {
		c.s.reg.refused(refusalLoginGrace)
		c.s.log.Info("login refused", "reason", "login grace time exceeded", "remote", c.remote,
			"grace", c.s.opts.LoginGraceTime)
		c.nc.Close()
	}
}

// leaveUnauthed counts the connection out of the unauthenticated ones,
// and out of its source's, once: at login, or at close if it never
// logged in.
func (c *conn) leaveUnauthed() {
	c.unauthed.Do(func() {
		c.s.unauthed.Add(-1)
		if c.source.IsValid() {
			c.s.sources.leave(c.source)
		}
	})
}

// closed runs once the connection has closed: it stops its timers and
// logs a login that never succeeded.
func (c *conn) closed() {
	defer contain(c.logger(), "connection close", nil)
	defer c.countOut() // even if what follows panics: Close waits for the count
	c.s.at("closed", c.remote)
	c.loginTimer.Stop()
	c.leaveUnauthed()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.ended = true
	if c.ka != nil {
		c.ka.Stop()
	}
	switch {
	case c.loggedIn:
	case c.user == "":
		c.s.log.Info("connection closed before authentication", "remote", c.remote)
	default:
		c.s.reg.refused(refusalNoAuth)
		c.s.log.Info("login refused", "reason", "no accepted authentication", "user", c.user,
			"remote", c.remote, "methods_tried", strings.Join(c.methods, ","))
	}
}

// countOut counts a logged-in connection out of the server's count
// (Server.connOut), once, as it closes; a login after it is not counted.
func (c *conn) countOut() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.loggedIn && !c.closing {
		c.s.connOut()
	}
	c.closing = true
}

// attempt records an authentication attempt for the log.
func (c *conn) attempt(user, method string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.user = user
	c.methods = append(c.methods, method)
}

// offer remembers the authorized key publicKey accepted, so that the key
// verifiedKey logs in with is the one looked up then: a reload between
// the two cannot mix two versions of the authorized keys.
func (c *conn) offer(key gossh.PublicKey, ak *auth.AuthorizedKey) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.offered) < c.s.opts.MaxAuthTries {
		c.offered[string(key.Marshal())] = ak
	}
}

// login fixes the connection's key from what offer recorded for it.
func (c *conn) login(key gossh.PublicKey) *auth.AuthorizedKey {
	c.mu.Lock()
	defer c.mu.Unlock()
	ak := c.offered[string(key.Marshal())]
	if ak == nil || c.key != nil {
		return nil
	}
	c.key, c.offered = ak, nil
	return ak
}

// authed ends the login phase: the grace timer stops.
func (c *conn) authed() {
	c.mu.Lock()
	if !c.loggedIn && !c.closing {
		c.s.connIn()
	}
	c.loggedIn = true
	c.mu.Unlock()
	c.loginTimer.Stop()
	c.leaveUnauthed()
}

// options returns the logged-in key's options.
func (c *conn) options() (auth.KeyOptions, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.key == nil {
		return auth.KeyOptions{}, false
	}
	return c.key.Options, true
}

// startKeepalive starts the keepalives with the connection's first session.
func (c *conn) startKeepalive(sc *gossh.ServerConn) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.sc != nil || c.ended || c.s.opts.KeepaliveInterval <= 0 {
		return
	}
	c.sc = sc
	c.ka = time.AfterFunc(c.s.opts.KeepaliveInterval, c.keepalive)
}

// keepalive runs every KeepaliveInterval: it sends keepalive@openssh.com
// and closes a connection that leaves KeepaliveCountMax of them
// unanswered: a client that vanished never holds a build for ever. A
// silent but answering client is never cut off.
func (c *conn) keepalive() {
	defer contain(c.logger(), "keepalive timer", c.abort)
	c.s.at("keepalive", c.remote)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ended {
		return
	}
	if c.pending {
		c.missed++
		if c.missed >= c.s.opts.KeepaliveCountMax {
			c.s.log.Info("closing connection", "reason", "no answer to keepalives",
				"remote", c.remote, "missed", c.missed)
			c.ended = true
			go c.sc.Close()
			return
		}
	} else {
		c.pending = true
		go func() {
			defer contain(c.logger(), "keepalive", c.abort)
			// Any answer, success or failure, shows the client is there.
			if _, _, err := c.sc.SendRequest("keepalive@openssh.com", true, nil); err == nil {
				c.mu.Lock()
				c.pending, c.missed = false, 0
				c.mu.Unlock()
			}
		}()
	}
	c.ka.Reset(c.s.opts.KeepaliveInterval)
}
