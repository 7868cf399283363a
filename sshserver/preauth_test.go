package sshserver

import (
	"bufio"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"
)

// Tests of admission before login: MaxStartups and PerSourceMaxStartups.
// Sources are loopback addresses: all of 127.0.0.0/8 is loopback on Linux.

// dialFrom logs in from the address src.
func (fs *fakeServer) dialFrom(src string) (*gossh.Client, error) {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 10 * time.Second}
	nc, err := d.Dial("tcp", fs.addr)
	if err != nil {
		return nil, err
	}
	nc.SetDeadline(time.Now().Add(10 * time.Second))
	cc, chans, reqs, err := gossh.NewClientConn(nc, fs.addr, &gossh.ClientConfig{
		User:            "tester",
		Auth:            []gossh.AuthMethod{gossh.PublicKeys(fs.signer)},
		HostKeyCallback: gossh.FixedHostKey(fs.host),
	})
	if err != nil {
		nc.Close()
		return nil, err
	}
	nc.SetDeadline(time.Time{})
	return gossh.NewClient(cc, chans, reqs), nil
}

// logins logs in n times from src, one after another, and returns how
// many got through.
func (fs *fakeServer) logins(n int, src string) int {
	ok := 0
	for range n {
		if c, err := fs.dialFrom(src); err == nil {
			ok++
			c.Close()
		}
	}
	return ok
}

// crowd opens n connections from each of sources, one after another,
// that never log in, and returns those the server admitted: it sends an
// admitted one its version line at once, and closes a dropped one at
// once. The admitted ones stay open until the test ends.
func crowd(t *testing.T, addr string, n int, sources ...string) []net.Conn {
	t.Helper()
	var admitted []net.Conn
	for _, src := range sources {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 10 * time.Second}
		for range n {
			nc, err := d.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			nc.SetReadDeadline(time.Now().Add(10 * time.Second))
			line, err := bufio.NewReader(nc).ReadString('\n')
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				t.Fatalf("a connection from %s was neither admitted nor dropped", src)
			}
			if !strings.HasPrefix(line, "SSH-2.0-") {
				nc.Close()
				continue
			}
			admitted = append(admitted, nc)
			t.Cleanup(func() { nc.Close() })
		}
	}
	return admitted
}

// TestAuthenticatedNotCounted: a connection stops counting against
// MaxStartups and PerSourceMaxStartups when it logs in. With room for one
// unauthenticated connection in all and one per source, logins held open
// never stop the next login from the same source.
func TestAuthenticatedNotCounted(t *testing.T) {
	fs := startFake(t, newFakeLauncher(t), func(o *Options) {
		o.MaxStartups, o.PerSourceMaxStartups = MaxStartups{1, 100, 1}, 1
	})
	for i := range 5 {
		c, err := fs.dialFrom("127.0.0.1")
		if err != nil {
			t.Fatalf("login %d, with %d logged in: %v", i+1, i, err)
		}
		t.Cleanup(func() { c.Close() })
		if n, by := fs.unauthed.Load(), fs.sources.counted(); n != 0 || len(by) != 0 {
			t.Fatalf("after login %d: %d unauthenticated, by source %v", i+1, n, by)
		}
	}
	// The limits hold: one unauthenticated connection fills them.
	if got := crowd(t, fs.addr, 2, "127.0.0.3", "127.0.0.4"); len(got) != 1 {
		t.Errorf("%d unauthenticated connections admitted with MaxStartups 1", len(got))
	}
}

// TestPerSourceMaxStartups: a source at its limit has its new
// connections dropped, loopback included unless exempted; other sources
// still log in; a source leaves the count when its last connection
// closes.
func TestPerSourceMaxStartups(t *testing.T) {
	fs := startFake(t, newFakeLauncher(t), func(o *Options) { o.PerSourceMaxStartups = 5 })
	idle := crowd(t, fs.addr, 20, "127.0.0.1")
	if len(idle) != 5 {
		t.Errorf("%d of 20 unauthenticated connections from one source admitted, want 5", len(idle))
	}
	if n := strings.Count(fs.log.String(), "too many unauthenticated connections from this source (per-source-max-startups)"); n != 15 {
		t.Errorf("%d drops logged, want 15", n)
	}
	if fs.logins(1, "127.0.0.1") != 0 {
		t.Error("a login from 127.0.0.1 got through with the source at its limit")
	}
	if fs.logins(1, "127.0.0.2") != 1 {
		t.Error("a login from 127.0.0.2 failed while 127.0.0.1 was at its limit")
	}
	if by := fs.sources.counted(); len(by) != 1 || by[netip.MustParsePrefix("127.0.0.1/32")] != 5 {
		t.Errorf("counted by source: %v, want 127.0.0.1/32: 5", by)
	}
	for _, c := range idle {
		c.Close()
	}
	// The server sees the closes when it reads; nothing tells the test.
	if !waitUntil(func() bool { return len(fs.sources.counted()) == 0 && fs.unauthed.Load() == 0 }) {
		t.Errorf("after the connections closed: by source %v, %d unauthenticated", fs.sources.counted(), fs.unauthed.Load())
	}
	if fs.logins(1, "127.0.0.1") != 1 {
		t.Error("127.0.0.1 cannot log in once its connections closed")
	}
}

// TestPerSourceExemptLoopback: --per-source-exempt-loopback lifts the
// limit for loopback sources; MaxStartups still applies.
func TestPerSourceExemptLoopback(t *testing.T) {
	fs := startFake(t, newFakeLauncher(t), func(o *Options) {
		o.PerSourceMaxStartups, o.PerSourceExemptLoopback = 5, true
		o.MaxStartups = MaxStartups{40, 100, 40}
	})
	if got := crowd(t, fs.addr, 50, "127.0.0.1"); len(got) != 40 {
		t.Errorf("%d of 50 admitted from exempt loopback with MaxStartups 40, want 40", len(got))
	}
	if by := fs.sources.counted(); len(by) != 0 {
		t.Errorf("exempt loopback counted by source: %v", by)
	}
}

// TestCrowding: 300 unauthenticated connections from a few sources do not
// crowd out logins from another source (before the per-source limit, 4
// to 8 of 20 got through, as MaxStartups' random early drop met about 175
// unauthenticated connections).
func TestCrowding(t *testing.T) {
	for _, tc := range []struct {
		name      string
		perSource int // 0: the default
		sources   []string
		admitted  int
	}{
		{"one source, defaults", 0, []string{"127.0.0.1"}, DefaultOptions().PerSourceMaxStartups},
		{"ten sources, 5 each", 5, tenSources(), 50},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fs := startFake(t, newFakeLauncher(t), func(o *Options) {
				if tc.perSource > 0 {
					o.PerSourceMaxStartups = tc.perSource
				}
				o.LoginGraceTime = 5 * time.Minute // the crowd stays until the end
			})
			if got := crowd(t, fs.addr, 300/len(tc.sources), tc.sources...); len(got) != tc.admitted {
				t.Errorf("%d of 300 crowding connections admitted, want %d", len(got), tc.admitted)
			}
			if ok := fs.logins(20, "127.0.0.2"); ok != 20 {
				t.Errorf("%d of 20 logins from another source got through, want all", ok)
			}
		})
	}
}

// TestParallelLoginsFromOneSource: the default per-source limit lets 32
// logins at once from one source through, as the Nix daemon's parallel
// builds make them (with a limit of 10, 22 of the 32 were dropped).
func TestParallelLoginsFromOneSource(t *testing.T) {
	fs := startFake(t, newFakeLauncher(t), nil)
	errs := make(chan error, 32)
	for range 32 {
		go func() {
			c, err := fs.dialFrom("127.0.0.1")
			if err == nil {
				c.Close()
			}
			errs <- err
		}()
	}
	for range 32 {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
}

func tenSources() []string {
	var s []string
	for i := range 10 {
		s = append(s, fmt.Sprintf("127.0.1.%d", i+1))
	}
	return s
}
