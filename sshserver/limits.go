package sshserver

import (
	"net"
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
	pa := &preauth{}
	ctx.SetValue(preauthKey{}, pa)
	remote := conn.RemoteAddr().String()
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
	pa.mu.Lock()
	defer pa.mu.Unlock()
	if pa.user == "" {
		s.log.Info("connection failed before authentication", "remote", remote, "err", err)
		return
	}
	s.log.Info("login refused", "reason", "no accepted authentication", "user", pa.user, "remote", remote,
		"methods_tried", strings.Join(pa.methods, ","), "err", err)
}
