// Package darlingexec turns an SSH session into a process inside a Darling
// prefix: the launcher's argv, the script it runs, the environment it gets,
// the session's stdio and exit status, ending every process of the session,
// and keeping the prefix's container warm. It knows Darling and processes;
// it knows nothing of SSH.
package darlingexec

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"
)

// Style says how the prefix reaches the launcher.
type Style string

const (
	// StyleEnv passes the prefix only as DPREFIX, as upstream Darling's
	// launcher takes it: it has no --prefix option. The default.
	StyleEnv Style = "env"
	// StyleFlag passes the prefix as `darling --prefix P shell …`, for a
	// wrapper that wants it, and also as DPREFIX.
	StyleFlag Style = "flag"
)

// DefaultStyle is how the prefix reaches the launcher unless told
// otherwise: as upstream Darling takes it.
const DefaultStyle = StyleEnv

// ParseStyle checks a --prefix-style value.
func ParseStyle(s string) (Style, error) {
	switch Style(s) {
	case StyleFlag, StyleEnv:
		return Style(s), nil
	}
	return "", fmt.Errorf("prefix style %q: want flag or env", s)
}

// MaxMessage is the largest message Darling's launcher can send to
// shellspawn: the length field is an unsigned short and the payload
// carries its terminating NUL. The joined `-c` string and every NAME=value
// must fit, or the protocol silently breaks.
const MaxMessage = 65535

// ErrTooLong is returned when a command or an environment variable would
// not fit in one shellspawn message.
var ErrTooLong = errors.New("too long for the Darling launcher")

// SessionVar names the environment variable that marks every process of a
// session. Darling forwards the environment into the container and children
// inherit it, so the marker finds the session's processes even though
// Darling starts them outside the launcher's process tree.
const SessionVar = "DARLING_SSHD_SESSION"

// nixPath puts the prefix's Nix profiles ahead of the macOS default PATH,
// which Darling forces and which lacks them in non-interactive shells.
const nixPath = `PATH="/nix/var/nix/profiles/default/bin:$HOME/.nix-profile/bin:$PATH"; export PATH`

// Launcher runs commands in one Darling prefix through one launcher binary.
// It is safe for concurrent use.
type Launcher struct {
	Path        string        // the darling launcher
	Prefix      string        // the prefix folder; never created by us
	Style       Style         // how the prefix is passed
	KillGrace   time.Duration // between SIGHUP and SIGKILL when a session ends
	WarmTimeout time.Duration // bound on a warm-up
	Log         *slog.Logger

	// HostEnv holds HOME and PATH of the server's own user, which the
	// launcher needs to start its container.
	HostEnv []string

	// LogPath is the file the warm-up's launcher writes to, and a
	// container it starts keeps writing to; "" is P.launcher.log.
	LogPath string

	// Cgroups, if set, gives each session a cgroup of its own.
	Cgroups *Cgroups

	warmMu     sync.Mutex // one warm-up at a time for the prefix
	warmErr    error      // the last warm-up's outcome, under warmMu
	warmFailed time.Time  // when it ended

	contMu     sync.Mutex
	cont       container // the verified container, under contMu
	rejected   int       // the last .init.pid pid refused, under contMu: logged once
	unreadable string    // the last .init.pid read error, under contMu: logged once
	ours       container // the container a warm-up of ours started, under contMu

	pool    *pool   // launchers started ahead of exec sessions, or nil
	tracker tracker // follows running sessions' processes
	bufs    buffers // lent to the sessions' streams while data flows

	// afterStart, set only by tests, runs between a session's launcher
	// start and the check that its container still runs: the one moment
	// a container's death matters, which no outside event can hit.
	afterStart func()
}

// Request is what a session asks the launcher to run.
type Request struct {
	// Command is the client's command string, run by /bin/sh -c exactly as
	// sent. Shell true and Command empty runs the prefix's login shell.
	Command string
	Shell   bool
	// User is the SSH login name (USER, LOGNAME).
	User string
	// Env holds NAME=value pairs accepted from the client and set by the
	// server (SSH_CONNECTION, SSH_CLIENT, …).
	Env []string
	// PTY, if set, runs the command on a terminal.
	PTY *PTY
}

// shQuote quotes s for a POSIX shell: inside single quotes everything is
// literal, and a single quote becomes '\”. Darling's launcher quotes each
// argument the same way.
func shQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// Script is what /bin/sh -c runs inside the prefix for a command: set up
// the session, print the start marker to stdout, then run /bin/sh -c with
// the client's command untouched and exit with its status. The marker is
// printed from two pieces so that the script's own text never contains it.
//
// The script does not exec the command: Darling's shellspawn reports only
// WEXITSTATUS of its direct child, so a command killed by a signal would
// reach the client as status 0. Waiting for it, the script's shell turns
// that into 128+n (137 for SIGKILL) and exits with it. See waitCommand.
func Script(command, marker string) string { return script(command, marker, "") }

// script is Script with steps run after the marker, before the command:
// the gate, SSH_TTY on a terminal.
func script(command, marker, steps string) string {
	var b strings.Builder
	b.WriteString(`cd "$HOME" 2>/dev/null; ` + nixPath + "; ")
	writeMarker(&b, marker)
	b.WriteString(steps)
	b.WriteString(waitCommand("/bin/sh -c " + shQuote(command)))
	return b.String()
}

// gateStep makes the script wait, after the marker, for one line on
// stdin before the client's command runs: the server sends it once the
// session's first processes are in the session's cgroup, so that nothing
// the command starts can be outside it. The shell's read takes one byte at
// a time from a pipe, so nothing of the client's stdin is lost. On a
// terminal, echo is off while it waits. Without the line (the session
// ended first) the script exits.
func gateStep(pty bool) string {
	if pty {
		return `_g=$(stty -g 2>/dev/null); stty -echo 2>/dev/null; IFS= read -r _l || exit 255; stty "$_g" 2>/dev/null; `
	}
	return `IFS= read -r _l || exit 255; `
}

// ttyStep sets SSH_TTY to the terminal the command has, as the command
// names it. The server's pty is not that terminal: Darling's launcher,
// seeing a terminal on its stdin, opens a pty of its own inside the
// container and relays to it, so only a look from inside can tell. It
// costs one fork, in terminal sessions only, and prints nothing: tty's
// answer is captured, its complaints go to /dev/null, and without a
// terminal (or without tty) SSH_TTY is unset, as sshd has it without a pty.
const ttyStep = `if _t=$(tty 2>/dev/null); then SSH_TTY=$_t; export SSH_TTY; else unset SSH_TTY; fi; unset _t; `

// waitCommand runs cmd as the script's last step and exits with its
// status. The script's shell catches the signals a session's processes
// may get together (its traps do nothing, and a child starts with them at
// their defaults), so that it outlives the command and reports its status.
// Its own stderr goes to /dev/null, and the command gets the session's
// back (kept on fd 3) in its own process before it execs, so that the
// shell's "Killed" line (bash's names the command) never reaches the
// client: a redirection on the command itself would hold the session's
// stderr while the shell reports.
func waitCommand(cmd string) string {
	return "trap : HUP INT QUIT TERM PIPE ALRM USR1 USR2; exec 3>&2 2>/dev/null; " +
		`/bin/sh -c 'exec 2>&3 3>&-; exec "$@"' sh ` + cmd + "; exit $?"
}

// shellScript is what runs for a shell session: Darling's `bash --login`
// has sourced the prefix's profile; the shell then starts at home with the
// Nix profiles on PATH, as a command would. Without a terminal, the start
// marker keeps what the profile printed off stdout, as for a command.
// steps run after the marker, as in script.
func shellScript(marker, steps string) string {
	var b strings.Builder
	b.WriteString(`cd "$HOME" 2>/dev/null; ` + nixPath + "; ")
	writeMarker(&b, marker)
	b.WriteString(steps)
	b.WriteString(waitCommand("/bin/bash"))
	return b.String()
}

// writeMarker prints the marker from two pieces, so that the script's own
// text never contains it.
func writeMarker(b *strings.Builder, marker string) {
	if marker != "" {
		half := len(marker) / 2
		b.WriteString("printf '%s%s' " + shQuote(marker[:half]) + " " + shQuote(marker[half:]) + "; ")
	}
}

// Args returns the launcher's arguments (without argv[0]) for a request;
// marker is the stdout start marker ("" for none: a terminal gets none).
func (l *Launcher) Args(req Request, marker string) []string { return l.args(req, marker, "") }

// args is Args with the script's gate step ("" for none). On a terminal,
// the script sets SSH_TTY after the gate (see ttyStep).
func (l *Launcher) args(req Request, marker, gate string) []string {
	var args []string
	if l.Style == StyleFlag {
		args = append(args, "--prefix", l.Prefix)
	}
	args = append(args, "shell", "/bin/sh", "-c")
	steps := gate
	if req.PTY != nil {
		steps += ttyStep
	}
	if req.Shell && req.Command == "" {
		return append(args, shellScript(marker, steps))
	}
	return append(args, script(req.Command, marker, steps))
}

// shellArgs returns the arguments after "shell" in args.
func shellArgs(args []string) []string {
	for i, a := range args {
		if a == "shell" {
			return args[i+1:]
		}
	}
	return nil
}

// joinedLen is the length of the string Darling builds from the shell
// arguments: each single-quoted, joined by spaces.
func joinedLen(args []string) int {
	n := 0
	for i, a := range args {
		if i > 0 {
			n++
		}
		n += len(shQuote(a))
	}
	return n
}

// Env returns the launcher's environment for a request, built from scratch:
// nothing of the server's own environment leaks in but HOME and PATH.
func (l *Launcher) Env(req Request, session string) []string {
	env := make([]string, 0, len(l.HostEnv)+len(req.Env)+5)
	env = append(env, l.HostEnv...)
	env = append(env, "DPREFIX="+l.Prefix)
	if session != "" {
		// Early, before what the client sent: the tracker reads only the
		// start of a process's environment.
		env = append(env, SessionVar+"="+session)
	}
	if req.User != "" {
		env = append(env, "USER="+req.User, "LOGNAME="+req.User)
	}
	return append(env, req.Env...)
}

// Check reports whether argv and environment fit Darling's messages, and
// whether the command can be passed at all (a NUL cannot be in argv).
func Check(args, env []string) error {
	sa := shellArgs(args)
	for _, a := range sa {
		if strings.IndexByte(a, 0) >= 0 {
			return errors.New("command contains a NUL byte")
		}
	}
	if len(sa) > 0 {
		if n := joinedLen(sa) + 1; n > MaxMessage {
			return fmt.Errorf("command is %d bytes once quoted for the launcher, limit %d: %w", n, MaxMessage, ErrTooLong)
		}
	}
	for _, kv := range env {
		if strings.IndexByte(kv, 0) >= 0 {
			name, _, _ := strings.Cut(kv, "=")
			return fmt.Errorf("environment variable %s contains a NUL byte", name)
		}
		if n := len(kv) + 1; n > MaxMessage {
			name, _, _ := strings.Cut(kv, "=")
			return fmt.Errorf("environment variable %s is %d bytes, limit %d: %w", name, n, MaxMessage, ErrTooLong)
		}
	}
	return nil
}

// ReadFileBeneath reads the regular file name (a path of several
// elements, say "private/etc/passwd") below dir, a folder a session can
// write to, such as the prefix's root from PrefixRoot: no symlink or magic
// link is followed and dir's filesystem is never left, nothing is opened
// that is not a regular file (a FIFO or a device a session planted is not
// read, so it cannot block), and a file over limit bytes is an error, not
// read on. It is readSmallFile, which reads the prefix's .init.pid, for
// callers outside this package: one way to read what a session wrote.
func ReadFileBeneath(dir *os.File, name string, limit int) ([]byte, error) {
	rc, err := dir.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	var b []byte
	var rerr error
	if err := rc.Control(func(fd uintptr) { b, rerr = readSmallFile(int(fd), name, limit) }); err != nil {
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	if rerr != nil {
		return nil, fmt.Errorf("read %s: %w", name, rerr)
	}
	return b, nil
}
