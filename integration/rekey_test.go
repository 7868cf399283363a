package integration

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"
)

// TestRekeyWhileClosing closes channels whose output is still flowing
// while key exchanges happen, and checks that the connection never stalls:
// after each step it must answer a new session within a bounded time (on a
// stall it fails with the server's goroutines).
//
// The stall the security review asked about is real on the server, in
// upstream x/crypto. handshakeTransport makes writers wait once 64 packets
// are queued behind a key exchange; the mux loop writes (the reply to a
// channel close, after taking the channel's writeMu, which a writer
// waiting for the key exchange may hold); and the read loop hands packets
// to the mux loop through a channel of 16, waiting when it is full. A key
// exchange the server starts completes only once that read loop reads the
// client's KEXINIT: if the mux loop is waiting for a writer and more than
// 16 packets precede the KEXINIT, the read loop waits for the mux loop,
// the mux loop for the writer, the writer for the key exchange, and the
// key exchange for the read loop, for ever (the server's keepalives wait
// too, in writePacket, so they never end the connection). The server
// starts one after 1 GiB each way with chacha20-poly1305, 64 GiB with
// AES-GCM, unless the client rekeys first. Patch 4 (third_party/
// x-crypto-4-kex-read-ahead.patch) lets the read loop read on to the
// peer's KEXINIT instead of waiting for the mux loop; its
// TestRekeyMuxBlockedOnWrite builds the stall packet by packet.
//
// First, rekeyServerStarts reaches that case: the server's own key
// exchange at 1 GiB, with channels closing and more than 16 client
// packets in flight. Against upstream x/crypto it stalled there in every
// run tried (10, of this test and its drafts, with and without -race).
//
// Then, 40 rounds of key exchanges the client starts: over one OpenSSH
// connection (a ControlMaster with RekeyLimit=1M) three sessions and over
// one Go client connection (RekeyThreshold 1 MiB) two sessions stream
// head -c from /dev/zero; the client reads a random amount of each, then
// closes it (OpenSSH: the pipe the master writes to; Go: the channel).
// These cannot stall, patched or not, and pass against upstream: until
// the server reads the client's KEXINIT, no key exchange is pending on its
// side, so nothing waits for one and the mux loop keeps taking packets;
// the read loop then hands the KEXINIT to the key exchange loop, which
// answers and reads the rest of the exchange from the connection itself,
// the client sending nothing else until its NEWKEYS. Writers and the mux
// loop may then wait for the exchange, but it waits for none of them. The
// rounds guard that path, and closing channels during rekeys, against
// regressions.
func TestRekeyWhileClosing(t *testing.T) {
	const rounds = 40
	pprofAddr := freeAddr(t)
	s := startServer(t, serverOpt{args: []string{"--pprof", pprofAddr, "--max-sessions", "64"}})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	// hung fails the test with the server's goroutines, which show where
	// a stall waits.
	hung := func(what string, err error) {
		t.Helper()
		var dump string
		if resp, gerr := http.Get("http://" + pprofAddr + "/debug/pprof/goroutine?debug=2"); gerr == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			dump = string(b)
		}
		t.Fatalf("%s: %v\nserver goroutines:\n%s", what, err, dump)
	}

	rekeyServerStarts(t, s, hung)

	master, masterLog := rekeyMaster(t, ctx, s)
	c := rekeyDialGo(t, s, 1<<20)
	start := time.Now()
	for round := range rounds {
		errs := make(chan error, 5)
		var wg sync.WaitGroup
		for range 3 {
			wg.Go(func() { errs <- rekeyCutOpenSSH(ctx, s, master, readAmount()) })
		}
		for range 2 {
			wg.Go(func() { errs <- rekeyCutGo(c, readAmount()) })
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				hung(fmt.Sprintf("round %d", round), err)
			}
		}
		if err := rekeyEcho(ctx, s, master); err != nil {
			hung(fmt.Sprintf("round %d: a new session over the OpenSSH connection", round), err)
		}
		if err := rekeyEchoGo(c); err != nil {
			hung(fmt.Sprintf("round %d: a new session over the Go connection", round), err)
		}
	}
	kexes := strings.Count(masterLog.String(), "SSH2_MSG_KEXINIT sent")
	t.Logf("%d rounds in %v; %d key exchanges on the OpenSSH connection", rounds, time.Since(start).Round(time.Millisecond), kexes)
	if kexes < rounds {
		t.Errorf("the OpenSSH connection rekeyed %d times in %d rounds: RekeyLimit not in effect?", kexes, rounds)
	}
	if strings.Contains(s.log.String(), "session panic") {
		t.Error("the server logged a session panic")
	}
}

// readAmount is how much of a session's output to read before closing
// it: at random, so that closes land at every point of the rekey cycle.
func readAmount() int64 { return 64<<10 + rand.Int64N(3<<20) }

// rekeyMaster starts an OpenSSH ControlMaster to s that rekeys every MiB
// and logs its key exchanges; it is ended with the test.
func rekeyMaster(t *testing.T, ctx context.Context, s *server) (sock string, log *syncBuffer) {
	t.Helper()
	sock = filepath.Join(s.dir, "mux")
	log = &syncBuffer{}
	cmd := s.ssh(ctx, "-M", "-S", sock, "-o", "ControlPersist=no", "-o", "RekeyLimit=1M",
		"-o", "LogLevel=DEBUG1", "-N", "dut")
	cmd.Stderr = log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	if !waitFor(time.Minute, func() bool {
		return exec.CommandContext(ctx, "ssh", "-F", s.sshConfig, "-S", sock, "-O", "check", "dut").Run() == nil
	}) {
		t.Fatalf("the ControlMaster did not start:\n%s", log.String())
	}
	return sock, log
}

// rekeyCutOpenSSH runs a streaming session through the ControlMaster,
// reads n bytes of its output and closes the pipe, which the master
// writes to: the master closes the channel mid-stream. The session must
// then end within a bounded time.
func rekeyCutOpenSSH(ctx context.Context, s *server, sock string, n int64) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cmd := s.ssh(ctx, "-S", sock, "dut", "head -c 100000000 /dev/zero")
	cmd.WaitDelay = time.Second
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	cmd.Stdout = w
	if err := cmd.Start(); err != nil {
		r.Close()
		w.Close()
		return err
	}
	w.Close()
	// The master holds the pipe's write end too: bound the read itself.
	r.SetReadDeadline(time.Now().Add(20 * time.Second))
	got, err := io.Copy(io.Discard, io.LimitReader(r, n))
	r.Close()
	if err == nil && got < n {
		err = io.ErrUnexpectedEOF
	}
	werr := cmd.Wait()
	if err != nil {
		return fmt.Errorf("OpenSSH session: read %d of %d bytes: %w", got, n, err)
	}
	if ctx.Err() != nil {
		return fmt.Errorf("OpenSSH session did not end after its output was closed: %v", werr)
	}
	return nil
}

// rekeyCutGo runs a streaming session on c, reads n bytes of its output,
// closes the channel and waits for the server's close.
func rekeyCutGo(c *gossh.Client, n int64) error {
	return withinTime(30*time.Second, func() error {
		sess, err := c.NewSession()
		if err != nil {
			return err
		}
		defer sess.Close()
		out, err := sess.StdoutPipe()
		if err != nil {
			return err
		}
		if err := sess.Start("head -c 100000000 /dev/zero"); err != nil {
			return err
		}
		if got, err := io.Copy(io.Discard, io.LimitReader(out, n)); err != nil || got < n {
			return fmt.Errorf("Go session: read %d of %d bytes: %v", got, n, err)
		}
		if err := sess.Close(); err != nil {
			return fmt.Errorf("Go session: close: %w", err)
		}
		// Wait returns once the server's close arrives; the command was
		// cut short, so its status is an error or missing.
		var exitMissing *gossh.ExitMissingError
		var exitErr *gossh.ExitError
		if err := sess.Wait(); err != nil && !errors.As(err, &exitMissing) && !errors.As(err, &exitErr) && !errors.Is(err, io.EOF) {
			return fmt.Errorf("Go session: wait: %w", err)
		}
		return nil
	})
}

// rekeyEcho runs echo ok through the ControlMaster.
func rekeyEcho(ctx context.Context, s *server, sock string) error {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	out, err := s.ssh(ctx, "-S", sock, "dut", "echo ok").Output()
	if err == nil && string(out) != "ok\n" {
		err = fmt.Errorf("output %q", out)
	}
	return err
}

// rekeyEchoGo runs echo ok on c.
func rekeyEchoGo(c *gossh.Client) error {
	return withinTime(20*time.Second, func() error {
		sess, err := c.NewSession()
		if err != nil {
			return err
		}
		defer sess.Close()
		out, err := sess.Output("echo ok")
		if err == nil && string(out) != "ok\n" {
			err = fmt.Errorf("output %q", out)
		}
		return err
	})
}

// rekeyDialGo connects a Go client to s that rekeys every threshold bytes.
func rekeyDialGo(t *testing.T, s *server, threshold uint64) *gossh.Client {
	t.Helper()
	return s.dialGoWith(t, gossh.Config{RekeyThreshold: threshold, Ciphers: []string{gossh.CipherChaCha20Poly1305}})
}

// withinTime runs f and returns its error, or an error if it has not
// returned after d (f is then left running: the test is failing).
func withinTime(d time.Duration, f func() error) error {
	done := make(chan error, 1)
	go func() { done <- f() }()
	select {
	case err := <-done:
		return err
	case <-time.After(d):
		return fmt.Errorf("no answer after %v", d)
	}
}

// rekeyServerStarts makes the server start a key exchange while channels
// close: on one connection whose client never rekeys, it streams from 24
// sessions to 1 GiB, the server's threshold with chacha20-poly1305,
// uploads on another session all along (packets ahead of the client's
// KEXINIT), and closes the streaming sessions one by one as the server's
// output crosses 1 GiB. The connection must carry on past it and answer a
// new session. --max-sessions must allow 26 sessions.
func rekeyServerStarts(t *testing.T, s *server, hung func(string, error)) {
	const streams = 24
	c := rekeyDialGo(t, s, 1<<40)
	up, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	in, err := up.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := up.Start("cat > /dev/null"); err != nil {
		t.Fatal(err)
	}
	go func() {
		buf := make([]byte, 4<<10)
		for {
			if _, err := in.Write(buf); err != nil {
				return
			}
		}
	}()

	// Start every stream before reading any, so that the server's output
	// is far from 1 GiB when the closes begin.
	sess := make([]*gossh.Session, streams)
	outs := make([]io.Reader, streams)
	var wg sync.WaitGroup
	errs := make(chan error, streams)
	for i := range sess {
		wg.Go(func() {
			ss, err := c.NewSession()
			if err != nil {
				errs <- err
				return
			}
			out, err := ss.StdoutPipe()
			if err == nil {
				err = ss.Start("head -c 2000000000 /dev/zero")
			}
			if err != nil {
				ss.Close()
				errs <- err
				return
			}
			sess[i], outs[i] = ss, out
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	var total atomic.Int64
	for _, out := range outs {
		go func() {
			buf := make([]byte, 32<<10)
			for {
				n, err := out.Read(buf)
				total.Add(int64(n))
				if err != nil {
					return
				}
			}
		}()
	}
	reach := func(n int64, d time.Duration) bool {
		return waitForFast(d, func() bool { return total.Load() >= n })
	}
	const gib = 1 << 30
	if !reach(gib-12<<20, 2*time.Minute) {
		hung("streaming to 1 GiB", fmt.Errorf("%d bytes read", total.Load()))
	}
	// Close all but 4 streams, one every 768 KiB read (or 50 ms, when
	// the output stops), from 12 MiB before 1 GiB on: across the point
	// where the server starts its key exchange.
	for i := range streams - 4 {
		reach(gib-12<<20+int64(i)*768<<10, 50*time.Millisecond)
		go sess[i].Close()
	}
	// The key exchange the server started must end: the remaining
	// streams carry on past the 2 MiB it queues until then.
	if !reach(gib+32<<20, 30*time.Second) {
		hung("the server's key exchange at 1 GiB", fmt.Errorf("stuck at %d bytes read", total.Load()))
	}
	for _, ss := range sess[streams-4:] {
		ss.Close()
	}
	if err := rekeyEchoGo(c); err != nil {
		hung("a new session after the server's key exchange", err)
	}
	t.Logf("server-started key exchange passed: %d bytes read", total.Load())
}

// waitForFast is waitFor polling every 100 µs, for byte counts that
// move fast.
func waitForFast(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(100 * time.Microsecond)
	}
	return true
}
