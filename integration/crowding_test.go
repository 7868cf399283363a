package integration

import (
	"bufio"
	"context"
	"net"
	"strings"
	"testing"
	"time"
)

// crowd opens n connections from src, one after another, that never log
// in, and returns how many the server admitted: it sends an admitted one
// its version line at once and closes a dropped one at once. The
// admitted ones stay open until the test ends.
func crowd(t *testing.T, addr, src string, n int) int {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 10 * time.Second}
	admitted := 0
	for range n {
		c, err := d.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		c.SetReadDeadline(time.Now().Add(time.Minute))
		line, err := bufio.NewReader(c).ReadString('\n')
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			t.Fatalf("a connection from %s was neither admitted nor dropped", src)
		}
		if strings.HasPrefix(line, "SSH-2.0-") {
			admitted++
		} else {
			c.Close()
		}
	}
	return admitted
}

// TestCrowding: with the default limits, 300 unauthenticated connections
// from one source (127.0.0.1) stop at --per-source-max-startups (32) and
// leave the real client's logins from another source (127.0.0.2) alone;
// before the per-source limit, about 175 were admitted and MaxStartups'
// random early drop let 4 to 8 of 20 logins through. The crowding
// source's own logins are dropped: loopback is limited like any source.
func TestCrowding(t *testing.T) {
	s := startServer(t, serverOpt{args: []string{"--login-grace-time", "5m"}})
	if n := crowd(t, s.addr, "127.0.0.1", 300); n != 32 {
		t.Errorf("%d of 300 unauthenticated connections from one source admitted, want 32", n)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	ok := 0
	for range 20 {
		if s.ssh(ctx, "-b", "127.0.0.2", "dut", "true").Run() == nil {
			ok++
		}
	}
	if ok != 20 {
		t.Errorf("%d of 20 logins from 127.0.0.2 got through, want all", ok)
	}
	if s.ssh(ctx, "dut", "true").Run() == nil {
		t.Error("a login from 127.0.0.1 got through with the source at its limit")
	}
	if !s.logged(`reason="too many unauthenticated connections from this source (per-source-max-startups)" remote=127.0.0.1:`) {
		t.Error("no per-source drop logged")
	}
}

// TestCrowdingExemptLoopback: --per-source-exempt-loopback lifts the
// per-source limit for loopback; --max-startups still holds.
func TestCrowdingExemptLoopback(t *testing.T) {
	s := startServer(t, serverOpt{args: []string{"--per-source-exempt-loopback", "--per-source-max-startups", "5", "--max-startups", "40"}})
	if n := crowd(t, s.addr, "127.0.0.1", 50); n != 40 {
		t.Errorf("%d of 50 unauthenticated connections from exempt loopback admitted, want 40 (max-startups)", n)
	}
}
