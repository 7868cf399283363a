package sshserver

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	gossh "golang.org/x/crypto/ssh"

	"github.com/darling-sshd/darling-sshd/darlingexec"
)

// fakeLauncher starts fakeCmds: what the session state machine needs of
// Darling, without root, namespaces or a launcher.
type fakeLauncher struct {
	dir     string
	started chan *fakeCmd // each command, once started
	live    atomic.Int32  // commands not yet ended or swept
	// gate, if set, is received from before Start returns: a start
	// that takes time (a warm-up).
	gate chan struct{}
	// startErr, if set, is Start's error.
	startErr error
	// panicOn names a fakeCmd method that panics ("Resize", "Stdio").
	panicOn atomic.Value
	since   time.Time // when the fake container started
}

func newFakeLauncher(t *testing.T) *fakeLauncher {
	return &fakeLauncher{dir: t.TempDir(), started: make(chan *fakeCmd, 1000), since: time.Now().Add(-time.Minute).Round(time.Second)}
}

func (f *fakeLauncher) Warm(context.Context) error                        { return nil }
func (f *fakeLauncher) ContainerGone(context.Context, time.Duration) bool { return false }
func (f *fakeLauncher) Path() string                                      { return "fake" }

// Container is a container that runs as pid 4200 since the launcher was
// made.
func (f *fakeLauncher) Container() (int, time.Time, bool) { return 4200, f.since, true }

func (f *fakeLauncher) Shutdown(context.Context) (bool, error) { return false, nil }

func (f *fakeLauncher) StartPool(int) {}

func (f *fakeLauncher) Close() {}

func (f *fakeLauncher) PoolState() (int, int) { return 0, 0 }

func (f *fakeLauncher) PrefixRoot(context.Context) (*os.File, error) { return os.Open(f.dir) }

func (f *fakeLauncher) Start(ctx context.Context, r darlingexec.Request) (Command, error) {
	if f.gate != nil {
		select {
		case <-f.gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if f.startErr != nil {
		return nil, f.startErr
	}
	c := newFakeCmd(f, r)
	f.live.Add(1)
	f.started <- c
	return c, nil
}

// fakeCmd is a command the test drives: it writes to Out and Err, reads
// In, and calls Exit. Its processes "hold" the output until Exit is called
// with hold false, or End kills them.
type fakeCmd struct {
	f        *fakeLauncher
	Req      darlingexec.Request
	inR      *io.PipeReader
	inW      *io.PipeWriter
	outR     *io.PipeReader
	Out      *io.PipeWriter
	errR     *io.PipeReader
	Err      *io.PipeWriter
	done     chan struct{}
	mu       sync.Mutex
	status   darlingexec.ExitStatus
	exited   bool
	ended    atomic.Bool
	swept    atomic.Bool
	released sync.Once
	signals  chan string
	resized  chan [2]uint16
}

func newFakeCmd(f *fakeLauncher, r darlingexec.Request) *fakeCmd {
	c := &fakeCmd{f: f, Req: r, done: make(chan struct{}), signals: make(chan string, 8), resized: make(chan [2]uint16, 64)}
	c.inR, c.inW = io.Pipe()
	c.outR, c.Out = io.Pipe()
	c.errR, c.Err = io.Pipe()
	return c
}

func (c *fakeCmd) Stdio() (io.WriteCloser, io.WriterTo, io.WriterTo) {
	if c.f.panicOn.Load() == "Stdio" {
		panic("fake: Stdio")
	}
	return c.inW, reader{c.outR}, reader{c.errR}
}

// reader gives a pipe the WriterTo a Command's output has.
type reader struct{ r io.Reader }

func (r reader) WriteTo(w io.Writer) (int64, error) { return io.Copy(w, r.r) }

func (c *fakeCmd) Resize(cols, rows uint16) error {
	if c.f.panicOn.Load() == "Resize" {
		panic("fake: Resize")
	}
	c.resized <- [2]uint16{cols, rows}
	return nil
}

func (c *fakeCmd) Signal(name string) error {
	c.signals <- name
	return nil
}

// Exit ends the launcher with st; the output is closed too unless hold.
func (c *fakeCmd) Exit(st darlingexec.ExitStatus, hold bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.exited {
		return
	}
	c.exited, c.status = true, st
	if !hold {
		c.Out.Close()
		c.Err.Close()
	}
	close(c.done)
}

func (c *fakeCmd) Done() <-chan struct{} { return c.done }

func (c *fakeCmd) Wait() (darlingexec.ExitStatus, error) {
	<-c.done
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.status, nil
}

// End kills every process: the output closes and the launcher, if still
// running, dies of SIGHUP.
func (c *fakeCmd) End(context.Context) {
	c.ended.Store(true)
	c.Out.Close()
	c.Err.Close()
	c.inR.Close()
	c.Exit(darlingexec.ExitStatus{Signal: "HUP", Ended: true}, false)
	c.release()
}

func (c *fakeCmd) Sweep(context.Context) {
	c.swept.Store(true)
	c.Out.Close()
	c.Err.Close()
	c.inR.Close()
	c.release()
}

func (c *fakeCmd) release() { c.released.Do(func() { c.f.live.Add(-1) }) }

func (c *fakeCmd) CloseOutput() {
	c.outR.Close()
	c.errR.Close()
}

func (c *fakeCmd) Pid() int { return 4242 }

func (c *fakeCmd) Usage() darlingexec.Usage { return darlingexec.Usage{} }

// fakeServer is a Server on 127.0.0.1 with the fake launcher, and a
// client key it accepts.
type fakeServer struct {
	*Server
	addr   string
	signer gossh.Signer
	host   gossh.PublicKey
	stop   func() // shuts the server down and waits for run to return
	log    *syncBuffer
}

// startFake starts a server with f; edit adjusts the options.
func startFake(t *testing.T, f *fakeLauncher, edit func(*Options)) *fakeServer {
	t.Helper()
	dir := t.TempDir()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	signer, _ := gossh.NewSignerFromKey(priv)
	sshPub, _ := gossh.NewPublicKey(pub)
	keys := filepath.Join(dir, "authorized_keys")
	if err := os.WriteFile(keys, gossh.MarshalAuthorizedKey(sshPub), 0o600); err != nil {
		t.Fatal(err)
	}
	logb := &syncBuffer{}
	o := DefaultOptions()
	o.HostKeyPath, o.AuthorizedKeysPath, o.KnownHostsOut = filepath.Join(dir, "host_key"), keys, ""
	o.AllowUsers = []string{"tester"}
	o.KillGrace, o.ShutdownGrace = 0, 0
	o.Log = slog.New(slog.NewTextHandler(logb, &slog.HandlerOptions{Level: slog.LevelDebug}))
	if edit != nil {
		edit(&o)
	}
	if err := o.Validate(); err != nil {
		t.Fatal(err)
	}
	s, err := newServer(o, f)
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- s.run(ctx, l) }()
	var once sync.Once
	fs := &fakeServer{Server: s, addr: l.Addr().String(), signer: signer, host: s.hostKey.PublicKey(), log: logb}
	fs.stop = func() {
		once.Do(func() {
			cancel()
			if err := <-ran; err != nil {
				t.Errorf("run: %v", err)
			}
			l.Close()
		})
	}
	t.Cleanup(func() {
		fs.stop()
		if t.Failed() {
			t.Logf("server log:\n%s", logb.String())
		}
	})
	return fs
}

// dial logs in with the client key.
func (fs *fakeServer) dial(t *testing.T) *gossh.Client {
	t.Helper()
	c, err := gossh.Dial("tcp", fs.addr, &gossh.ClientConfig{
		User:            "tester",
		Auth:            []gossh.AuthMethod{gossh.PublicKeys(fs.signer)},
		HostKeyCallback: gossh.FixedHostKey(fs.host),
		Timeout:         10 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// syncBuffer is a log sink tests read while the server writes.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// waitUntil polls cond, which has no signal to wait on, for up to 10 s.
func waitUntil(cond func() bool) bool {
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if cond() {
			return true
		}
	}
	return cond()
}

var errFake = errors.New("fake: the launcher failed")
