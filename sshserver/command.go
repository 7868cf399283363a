package sshserver

import (
	"context"
	"io"
	"os"
	"time"

	"github.com/darling-sshd/darling-sshd/darlingexec"
)

// Command is what a session needs of its running command. darlingexec's
// Process is the real one; tests drive sessions with a fake.
type Command interface {
	// Stdio returns the command's stdin (closing it is the command's
	// EOF) and its stdout and stderr, each read once to its end.
	Stdio() (stdin io.WriteCloser, stdout, stderr io.WriterTo)
	// Resize sets the terminal's size; an error without a terminal.
	Resize(cols, rows uint16) error
	// Signal delivers an RFC 4254 signal name to the command.
	Signal(name string) error
	// Done is closed when the launcher has exited; Wait then says how.
	Done() <-chan struct{}
	Wait() (darlingexec.ExitStatus, error)
	// End ends every process of the session; Sweep ends those left
	// after a normal exit. Both return once none is left.
	End(ctx context.Context)
	Sweep(ctx context.Context)
	// CloseOutput stops reading the output: pending reads return.
	CloseOutput()
	Pid() int
	// Usage is what the session's processes used, once End or Sweep
	// returned; zero where unknown.
	Usage() darlingexec.Usage
}

// Launcher starts commands in the prefix and opens it for SFTP.
// darlingexec's Launcher is the real one.
type Launcher interface {
	Warm(ctx context.Context) error
	Start(ctx context.Context, r darlingexec.Request) (Command, error)
	// PrefixRoot opens the prefix's root as its processes see it.
	PrefixRoot(ctx context.Context) (*os.File, error)
	// ContainerGone reports whether the prefix's container is gone, or
	// goes within d.
	ContainerGone(ctx context.Context, d time.Duration) bool
	// Container returns the running container's pid and start, for the
	// status socket and the metrics; ok is false when none runs.
	Container() (pid int, since time.Time, ok bool)
	// Path names the launcher for the log.
	Path() string
	// Shutdown stops the prefix's container if this server's warm-up
	// started it, and reports whether it did.
	Shutdown(ctx context.Context) (bool, error)
	// StartPool keeps n launchers started ahead of exec sessions without
	// a terminal; Close ends those still idle.
	StartPool(n int)
	Close()
	// PoolState reports the pool's size and how many of its launchers
	// could take a session now.
	PoolState() (size, ready int)
}

// darling adapts darlingexec's Launcher to Launcher.
type darling struct{ *darlingexec.Launcher }

func (d darling) Start(ctx context.Context, r darlingexec.Request) (Command, error) {
	p, err := d.Launcher.Start(ctx, r)
	if err != nil {
		return nil, err
	}
	return process{p}, nil
}

func (d darling) Path() string { return d.Launcher.Path }

// process adapts darlingexec's Process to Command.
type process struct{ *darlingexec.Process }

func (p process) Stdio() (io.WriteCloser, io.WriterTo, io.WriterTo) {
	return p.Stdin, p.Stdout, p.Stderr
}
