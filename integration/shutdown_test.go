package integration

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// relaySource is a ProxyCommand for the ssh client: its stdio to a TCP
// connection, exiting when the server closes, as nc and ssh -W do. Once
// its arm file exists and the server has sent something, it stops its
// parent, the client, right after forwarding the client's next write (at
// a session's end: the client's channel close, just before its
// disconnect) for up to 500 ms, as a busy machine may. If the server
// closes meanwhile, the relay closes the client's pipes before it lets
// the client go on, so that the client's disconnect finds them closed.
const relaySource = `package main

import (
	"net"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"
	"time"
)

func main() {
	// Neither a client that closed its pipes nor one that ends its
	// ProxyCommand as it exits (SIGHUP) may take the relay down before
	// it let the client go on.
	signal.Ignore(syscall.SIGPIPE, syscall.SIGHUP)
	c, err := net.Dial("tcp", os.Args[1])
	if err != nil {
		os.Exit(1)
	}
	arm := os.Args[2]
	client := os.Getppid()
	var serverSpoke atomic.Bool
	serverDone := make(chan struct{})
	go func() {
		buf := make([]byte, 32<<10)
		for {
			n, err := c.Read(buf)
			if n > 0 {
				if _, err := os.Stat(arm); err == nil {
					serverSpoke.Store(true)
				}
				os.Stdout.Write(buf[:n])
			}
			if err != nil {
				close(serverDone)
				return
			}
		}
	}()
	buf := make([]byte, 32<<10)
	stopped := false
	for {
		n, err := os.Stdin.Read(buf)
		if n > 0 {
			c.Write(buf[:n])
			if !stopped && serverSpoke.Load() {
				stopped = true
				syscall.Kill(client, syscall.SIGSTOP)
				select {
				case <-serverDone:
					os.Stdin.Close()
					os.Stdout.Close()
				case <-time.After(500 * time.Millisecond):
				}
				syscall.Kill(client, syscall.SIGCONT)
			}
		}
		if err != nil {
			c.(*net.TCPConn).CloseWrite()
			break
		}
	}
	<-serverDone
}
`

// buildRelay builds relaySource and returns the binary's path.
func buildRelay(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "main.go"), []byte(relaySource), 0o644)
	os.WriteFile(filepath.Join(dir, "go.mod"), []byte("module relay\n\ngo 1.26\n"), 0o644)
	cmd := exec.Command("go", "build", "-o", "relay", ".")
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build the relay: %v\n%s", err, out)
	}
	return filepath.Join(dir, "relay")
}

// TestStopUnderFinishingSession: SIGTERM while a session runs; the session
// then finishes within the shutdown grace. Its client gets the output, the
// exit status and the close, and exits 0, every time, 50 times, though it
// is held up between its channel close and its disconnect, as on a busy
// machine, and connects through a ProxyCommand that ends when the server
// closes (the relay above; nc and ProxyJump's ssh -W do the same): the
// server lets the client close the connection after the last session
// ends. Before, the server closed the connection as soon as the last
// session ended, under the client's channel close and disconnect: the
// relay exited with the server's close, and the client failed with
// "client_loop: send disconnect: Broken pipe", status 255, although its
// command had succeeded.
func TestStopUnderFinishingSession(t *testing.T) {
	prefix := tempPrefix(t) // one container for all: warm-ups are quick
	relay := buildRelay(t)
	const runs = 50
	failed := 0
	for i := range runs {
		s := startServer(t, serverOpt{prefix: prefix, args: []string{"--shutdown-grace", "1m"}})
		arm := filepath.Join(s.dir, "arm")
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		cmd := s.ssh(ctx, "-o", "ProxyCommand="+relay+" 127.0.0.1:%p "+arm, "dut", "cat > /dev/null; echo done")
		in, err := cmd.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		if !s.logged(`msg="exec started"`) {
			t.Fatalf("run %d: the session did not start", i)
		}
		s.cmd.Process.Signal(syscall.SIGTERM)
		if !s.logged("waiting for running sessions") {
			t.Fatalf("run %d: the server does not drain", i)
		}
		os.WriteFile(arm, nil, 0o644)
		in.Close() // the command finishes
		err = cmd.Wait()
		cancel()
		if err != nil || out.String() != "done\n" {
			failed++
			t.Errorf("run %d: ssh exited %d, stdout %q, stderr %q", i, cmd.ProcessState.ExitCode(), out.String(), errb.String())
		}
		select {
		case <-s.exited:
		case <-time.After(time.Minute):
			t.Fatalf("run %d: the server did not exit", i)
		}
	}
	if failed > 0 {
		t.Errorf("%d of %d clients failed", failed, runs)
	}
}
