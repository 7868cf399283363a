package sshserver

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	gliderssh "github.com/gliderlabs/ssh"
	gossh "golang.org/x/crypto/ssh"
)

// preauth is what the server knows of a connection before it has logged
// in: who it claims to be and which methods it tried, for the log line
// that ends a failed login, and the login grace timer.
type preauth struct {
	authed  atomic.Bool
	left    sync.Once // counted out of the unauthenticated connections
	timer   *time.Timer
	mu      sync.Mutex
	user    string
	methods []string
}

type preauthKey struct{}

// connCallback starts a connection's login grace time: a connection that
// has not logged in by then is closed, as sshd's LoginGraceTime does. A
// timer, not a deadline: gliderlabs resets the conn's deadlines on every
// read and write.
func (s *Server) connCallback(ctx gliderssh.Context, conn net.Conn) net.Conn {
	remote := conn.RemoteAddr().String()
	if n := s.unauthed.Add(1); s.opts.MaxStartups.drop(int(n)-1, s.rand) {
		s.unauthed.Add(-1)
		s.log.Info("connection dropped", "reason", "too many unauthenticated connections (max-startups)",
			"remote", remote, "unauthenticated", n-1)
		return nil
	}
	s.trim.opened(ctx)
	pa := &preauth{}
	ctx.SetValue(preauthKey{}, pa)
	s.preauth.Store(remote, pa)
	pa.timer = time.AfterFunc(s.opts.LoginGraceTime, func() {
		if !pa.authed.Load() {
			s.log.Info("login refused", "reason", "login grace time exceeded", "remote", remote,
				"grace", s.opts.LoginGraceTime)
			conn.Close()
		}
	})
	return conn
}

// authLog records authentication attempts; a success stops the grace timer.
func (s *Server) authLog(pa *preauth) func(gossh.ConnMetadata, string, error) {
	return func(conn gossh.ConnMetadata, method string, err error) {
		if pa == nil {
			return
		}
		if err == nil {
			pa.authed.Store(true)
			pa.timer.Stop()
			s.preauth.Delete(conn.RemoteAddr().String())
			s.leavePreauth(pa)
			return
		}
		pa.mu.Lock()
		pa.user = conn.User()
		pa.methods = append(pa.methods, method)
		pa.mu.Unlock()
		if method == "password" || method == "keyboard-interactive" {
			s.log.Info("login refused", "reason", method+" authentication is not offered",
				"user", conn.User(), "remote", conn.RemoteAddr().String())
		}
	}
}

// connectionFailed logs a connection that ended before it logged in.
func (s *Server) connectionFailed(c net.Conn, err error) {
	remote := c.RemoteAddr().String()
	v, ok := s.preauth.LoadAndDelete(remote)
	if !ok {
		s.log.Info("connection failed", "remote", remote, "err", err)
		return
	}
	pa := v.(*preauth)
	pa.timer.Stop()
	s.leavePreauth(pa)
	pa.mu.Lock()
	defer pa.mu.Unlock()
	if pa.user == "" {
		s.log.Info("connection failed before authentication", "remote", remote, "err", err)
		return
	}
	s.log.Info("login refused", "reason", "no accepted authentication", "user", pa.user, "remote", remote,
		"methods_tried", strings.Join(pa.methods, ","), "err", err)
}

// leavePreauth counts a connection out of the unauthenticated ones, once.
func (s *Server) leavePreauth(pa *preauth) {
	pa.left.Do(func() { s.unauthed.Add(-1) })
}

// MaxStartups is sshd's MaxStartups start:rate:full: past start
// unauthenticated connections, a new one is dropped with probability
// rate%, rising linearly to 100% at full.
type MaxStartups struct{ Start, Rate, Full int }

// ParseMaxStartups reads start:rate:full, or a single number (full).
func ParseMaxStartups(v string) (MaxStartups, error) {
	parts := strings.Split(v, ":")
	var n []int
	for _, p := range parts {
		i, err := strconv.Atoi(p)
		if err != nil || i < 0 {
			return MaxStartups{}, fmt.Errorf("%q: want start:rate:full", v)
		}
		n = append(n, i)
	}
	switch {
	case len(n) == 1 && n[0] > 0:
		return MaxStartups{n[0], 100, n[0]}, nil
	case len(n) == 3 && n[0] > 0 && n[0] <= n[2] && n[1] <= 100:
		return MaxStartups{n[0], n[1], n[2]}, nil
	}
	return MaxStartups{}, fmt.Errorf("%q: want start:rate:full with 0 < start <= full and rate <= 100", v)
}

// drop decides for a new connection while n others are unauthenticated.
func (m MaxStartups) drop(n int, r func(int) int) bool {
	switch {
	case m.Full == 0 || n < m.Start:
		return false
	case n >= m.Full:
		return true
	}
	p := m.Rate
	if m.Full > m.Start {
		p += (100 - m.Rate) * (n - m.Start) / (m.Full - m.Start)
	}
	return r(100) < p
}

// connState is what the server keeps per logged-in connection.
type connState struct {
	sessions atomic.Int32

	// The keepalives, driven by a timer: a connection holds no
	// goroutine for them between probes.
	mu      sync.Mutex
	timer   *time.Timer
	pending bool // a probe is unanswered
	missed  int  // probes left unanswered in a row
	closed  bool
}

// connStateFor returns conn's state, creating it (and starting the
// connection's keepalives) with its first session. ctx is the
// connection's: it ends when the connection does.
func (s *Server) connStateFor(ctx context.Context, conn *gossh.ServerConn) *connState {
	v, loaded := s.perConn.LoadOrStore(conn, &connState{})
	cs := v.(*connState)
	if !loaded {
		cs.mu.Lock()
		if s.opts.KeepaliveInterval > 0 {
			cs.timer = time.AfterFunc(s.opts.KeepaliveInterval, func() { s.keepalive(conn, cs) })
		}
		cs.mu.Unlock()
		context.AfterFunc(ctx, func() {
			cs.mu.Lock()
			cs.closed = true
			if cs.timer != nil {
				cs.timer.Stop()
			}
			cs.mu.Unlock()
			s.perConn.Delete(conn)
		})
	}
	return cs
}

// keepalive runs every KeepaliveInterval: it sends keepalive@openssh.com
// and closes a connection that leaves KeepaliveCountMax of them
// unanswered: a client that vanished never holds a build for ever. A
// silent but answering client is never cut off.
func (s *Server) keepalive(conn *gossh.ServerConn, cs *connState) {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if cs.closed {
		return
	}
	if cs.pending {
		cs.missed++
		if cs.missed >= s.opts.KeepaliveCountMax {
			s.log.Info("closing connection", "reason", "no answer to keepalives",
				"remote", conn.RemoteAddr().String(), "missed", cs.missed)
			cs.closed = true
			go conn.Close()
			return
		}
	} else {
		cs.pending = true
		go func() {
			// Any answer, success or failure, shows the client is there.
			if _, _, err := conn.SendRequest("keepalive@openssh.com", true, nil); err == nil {
				cs.mu.Lock()
				cs.pending, cs.missed = false, 0
				cs.mu.Unlock()
			}
		}()
	}
	cs.timer.Reset(s.opts.KeepaliveInterval)
}
