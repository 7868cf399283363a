package sshserver

import (
	"strings"
	"testing"
	"time"

	"github.com/darling-sshd/darling-sshd/darlingexec"
)

// TestCloseLetsClientsClose: once the last session has ended, Close
// leaves the connections to their clients for a moment: a client can
// still use its connection, and Close returns as soon as the client
// closes it. A client that keeps it open has it closed after closeLinger;
// a second signal (Hurry) closes it at once. Before, Close closed every
// connection as soon as the last session ended.
func TestCloseLetsClientsClose(t *testing.T) {
	for _, how := range []string{"client closes", "client stays", "hurry"} {
		t.Run(how, func(t *testing.T) {
			f := newFakeLauncher(t)
			hurry := make(chan struct{})
			s := startFake(t, f, func(o *Options) {
				o.ShutdownGrace = time.Minute
				o.Hurry = hurry
			})
			c := s.dial(t)
			ch := openSession(t, c)
			ch.exec(t, "work")
			cmd := next(t, f)
			stopped := make(chan time.Time, 1)
			go func() {
				s.stop()
				stopped <- time.Now()
			}()
			if !waitUntil(func() bool { return strings.Contains(s.log.String(), "waiting for running sessions") }) {
				t.Fatal("the server does not drain")
			}
			cmd.Exit(darlingexec.ExitStatus{Code: 0}, false)
			if e := ch.finish(t); e.status != 0 {
				t.Fatalf("the session: %+v", e)
			}
			ch.Close()
			if !waitUntil(func() bool { return strings.Contains(s.log.String(), "letting clients close their connections") }) {
				t.Fatal("Close does not let the clients close")
			}
			// The connection is still the client's.
			if _, _, err := c.SendRequest("keepalive@openssh.com", true, nil); err != nil {
				t.Fatalf("the connection after the last session: %v", err)
			}
			start := time.Now()
			switch how {
			case "client closes":
				c.Close()
			case "hurry":
				close(hurry)
			}
			select {
			case at := <-stopped:
				took := at.Sub(start)
				if how == "client stays" && took < closeLinger/2 {
					t.Errorf("Close returned %v after the last session, before the wait of %v", took, closeLinger)
				}
				if how != "client stays" && took > closeLinger/2 {
					t.Errorf("Close returned %v after the client closed or hurried", took)
				}
			case <-time.After(closeLinger + 10*time.Second):
				t.Fatal("Close did not return")
			}
			if how != "client closes" {
				done := make(chan error, 1)
				go func() { done <- c.Wait() }()
				select {
				case <-done:
				case <-time.After(10 * time.Second):
					t.Error("the server left the connection open")
				}
			}
		})
	}
}
