package sshserver

import (
	"fmt"
	"log/slog"
	"runtime/debug"
)

// Panics in what libraries call.
//
// gliderlabs, x/crypto and pkg/sftp call the server's functions on
// goroutines they start themselves: a connection's (its callbacks, the
// handshake, reads of the connection), a channel handler's, pkg/sftp's
// request workers and its sender; the Go runtime runs timer callbacks on
// goroutines of its own. No recover of the server's stands between a
// panic there and the end of the process, and with it every running
// build. So each such function recovers its own panic with contain: it
// logs the panic and its stack with the connection's fields and turns it
// into an error for that request (an SFTP status), a refusal (a login) or
// the end of that connection; the server goes on serving. A session's own
// goroutines hand their panics to its loop instead (session.catch).

// contain, deferred at the top of a function a library calls, recovers
// that function's panic: it logs it with where it happened, its stack and
// log's fields, then calls then (if not nil), which sets what the library
// gets back or ends the connection.
func contain(log *slog.Logger, where string, then func()) {
	v := recover()
	if v == nil {
		return
	}
	log.Error("panic recovered; the server goes on", "in", where, "panic", fmt.Sprint(v), "stack", string(debug.Stack()))
	if then == nil {
		return
	}
	// then must not take the process down either.
	defer func() {
		if v := recover(); v != nil {
			log.Error("panic while recovering from a panic", "in", where, "panic", fmt.Sprint(v), "stack", string(debug.Stack()))
		}
	}()
	then()
}

// at is where tests inject panics: it calls the server's hook, set only
// by tests, with the place the server was entered and the remote address
// of the connection it was entered for.
func (s *Server) at(where, remote string) {
	if h := s.hook.Load(); h != nil {
		(*h)(where, remote)
	}
}
