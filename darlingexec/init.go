package darlingexec

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// MaxPrefixLen is the longest prefix path Darling can use: its shellspawn
// socket, P/var/run/shellspawn.sock, must fit in a unix socket address
// (108 bytes with the NUL).
const MaxPrefixLen = 107 - len("/var/run/shellspawn.sock")

// CheckPrefix reports a prefix path Darling would fail on obscurely: too
// long for its socket path, on NFS or eCryptfs, or not owned by the user
// running it.
func CheckPrefix(prefix string) error {
	if !filepath.IsAbs(prefix) {
		return fmt.Errorf("prefix %q: must be an absolute path", prefix)
	}
	if n := len(prefix); n > MaxPrefixLen {
		return fmt.Errorf("prefix %s: %d bytes; Darling's socket path allows at most %d", prefix, n, MaxPrefixLen)
	}
	// The nearest folder that exists says which filesystem it is on.
	dir := prefix
	for {
		var st unix.Statfs_t
		err := unix.Statfs(dir, &st)
		if err == nil {
			switch st.Type {
			case unix.NFS_SUPER_MAGIC:
				return fmt.Errorf("prefix %s: on NFS, which Darling does not support", prefix)
			case unix.ECRYPTFS_SUPER_MAGIC:
				return fmt.Errorf("prefix %s: on eCryptfs, which Darling does not support", prefix)
			}
			break
		}
		if !errors.Is(err, unix.ENOENT) || dir == "/" {
			return fmt.Errorf("prefix %s: %w", prefix, err)
		}
		dir = filepath.Dir(dir)
	}
	var st unix.Stat_t
	if err := unix.Stat(prefix, &st); err == nil && int(st.Uid) != os.Geteuid() {
		return fmt.Errorf("prefix %s: owned by uid %d, but Darling runs it as uid %d", prefix, st.Uid, os.Geteuid())
	}
	return nil
}

// InitOptions is what `darling-sshd init` prepares the prefix with.
type InitOptions struct {
	ShareStore     bool // link /nix to the host's store (unsafe for remote builds)
	SystemFeatures []string
	MaxJobs        int
	Force          bool // overwrite a managed file a person edited
}

// nixConfPath is the prefix's Nix configuration.
const nixConfPath = "/etc/nix/nix.conf"

// managedTag starts the line that marks a file as written by init, with
// the SHA-256 of what follows it, so that an edit by hand is noticed.
const managedTag = "# darling-sshd-managed sha256="

// NixConf returns the nix.conf init writes, managed header included. The
// NixOS module's lib.nix builds the same text (a golden test checks).
func NixConf(o InitOptions) string {
	var b strings.Builder
	b.WriteString("build-users-group =\n")
	b.WriteString("sandbox = false\n")
	b.WriteString("experimental-features = nix-command flakes\n")
	b.WriteString("trusted-users = root\n")
	b.WriteString("max-jobs = " + strconv.Itoa(o.MaxJobs) + "\n")
	if len(o.SystemFeatures) > 0 {
		b.WriteString("system-features = " + strings.Join(o.SystemFeatures, " ") + "\n")
	}
	// Start collecting garbage below 1 GiB free, stop at 4 GiB, so that a
	// builder's disk does not fill.
	b.WriteString("min-free = 1073741824\n")
	b.WriteString("max-free = 4294967296\n")
	body := b.String()
	sum := sha256.Sum256([]byte(body))
	return "# Written by darling-sshd init; edit it there, or your edit is kept only until init --force.\n" +
		managedTag + hex.EncodeToString(sum[:]) + "\n" + body
}

// managedUnedited reports whether text is a managed file nobody edited.
func managedUnedited(text string) bool {
	_, rest, ok := strings.Cut(text, "\n")
	if !ok {
		return false
	}
	tagLine, body, ok := strings.Cut(rest, "\n")
	sum, isTag := strings.CutPrefix(tagLine, managedTag)
	if !ok || !isTag {
		return false
	}
	want := sha256.Sum256([]byte(body))
	return sum == hex.EncodeToString(want[:])
}

// Init prepares the prefix for Nix through the launcher, inside the
// prefix, never by writing the prefix folder behind a running container.
// It is idempotent; each step reports one line to out.
func (l *Launcher) Init(ctx context.Context, o InitOptions, out io.Writer) error {
	if err := CheckPrefix(l.Prefix); err != nil {
		return err
	}
	want := NixConf(o)
	have, err := l.run(ctx, "if [ -e "+nixConfPath+" ]; then cat "+nixConfPath+"; fi", "")
	if err != nil {
		return fmt.Errorf("read %s in the prefix: %w", nixConfPath, err)
	}
	switch {
	case have == want:
		fmt.Fprintf(out, "%s: unchanged\n", nixConfPath)
	case have != "" && !managedUnedited(have) && !o.Force:
		fmt.Fprintf(out, "%s: edited by hand; left alone (init --force overwrites it)\n", nixConfPath)
	default:
		if _, err := l.run(ctx, "mkdir -p /etc/nix && cat > "+nixConfPath+".tmp && mv "+nixConfPath+".tmp "+nixConfPath, want); err != nil {
			return fmt.Errorf("write %s in the prefix: %w", nixConfPath, err)
		}
		fmt.Fprintf(out, "%s: written\n", nixConfPath)
	}
	if o.ShareStore {
		res, err := l.run(ctx, `if [ "$(readlink /nix)" = /Volumes/SystemRoot/nix ]; then echo unchanged
elif [ -d /nix ] && [ ! -L /nix ] && [ -n "$(ls -A /nix)" ]; then echo "not empty; left alone"
else rm -f /nix 2>/dev/null; rmdir /nix 2>/dev/null; ln -s /Volumes/SystemRoot/nix /nix && echo "linked to /Volumes/SystemRoot/nix"; fi`, "")
		if err != nil {
			return fmt.Errorf("link /nix in the prefix: %w", err)
		}
		fmt.Fprintf(out, "/nix: %s", res)
	}
	res, err := l.run(ctx, `if [ -d /var/empty ]; then echo unchanged; else mkdir -p /var/empty && chmod 555 /var/empty && echo created; fi`, "")
	if err != nil {
		return fmt.Errorf("create /var/empty in the prefix: %w", err)
	}
	fmt.Fprintf(out, "/var/empty: %s", res)
	return nil
}

// run runs a command in the prefix with stdin and returns its stdout. A
// command that fails is an error saying how, with what it wrote to stderr
// (up to maxRunStderr bytes). It returns only once the launcher has been
// reaped, whatever happens: when ctx is done the command is ended; what
// the command left behind is ended once it exited; and output that a
// process outside the session still holds (a container the launcher
// cold-started keeps it, Darling #1510) is given up drainAfterExit after
// that, an error, rather than waited for for ever.
func (l *Launcher) run(ctx context.Context, command, stdin string) (string, error) {
	p, err := l.Start(ctx, Request{Command: command})
	if err != nil {
		return "", err
	}
	defer p.CloseOutput()
	stop := context.AfterFunc(ctx, func() { p.End(ctx) })
	defer stop()
	go func() {
		io.WriteString(p.Stdin, stdin)
		p.Stdin.Close()
	}()
	outc, errc := readAsync(p.Stdout, -1), readAsync(p.Stderr, maxRunStderr)
	st, werr := p.Wait()
	// Ends what the command left behind, so that its output closes.
	p.Sweep(ctx)
	held := time.AfterFunc(drainAfterExit, p.CloseOutput)
	out, serr := <-outc, <-errc
	held.Stop()
	stderr := strings.TrimSpace(strings.ToValidUTF8(string(serr.b), "?"))
	switch {
	case ctx.Err() != nil:
		return "", fmt.Errorf("the command was ended: %w", ctx.Err())
	case werr != nil:
		return "", werr
	case errors.Is(out.err, os.ErrClosed):
		return "", fmt.Errorf("its output stayed open %s after it exited (a process outside the session holds it)", drainAfterExit)
	case out.err != nil:
		return "", out.err
	case st.Signal != "":
		err = fmt.Errorf("the launcher died of SIG%s", st.Signal)
	case st.Code != 0:
		err = fmt.Errorf("exit status %d", st.Code)
	default:
		return string(out.b), nil
	}
	if stderr != "" {
		err = fmt.Errorf("%w: %s", err, stderr)
	}
	return "", err
}

// maxRunStderr bounds what init reports of a failed command's stderr.
const maxRunStderr = 4 << 10

// drainAfterExit bounds how long run reads a command's output once the
// command and all it left behind have ended.
const drainAfterExit = 2 * time.Second

// readResult is what readAsync read.
type readResult struct {
	b   []byte
	err error
}

// readAsync reads r to its end in the background, keeping at most limit
// bytes (all if limit < 0), and sends what it kept.
func readAsync(r io.Reader, limit int64) <-chan readResult {
	c := make(chan readResult, 1)
	go func() {
		lr := r
		if limit >= 0 {
			lr = io.LimitReader(r, limit)
		}
		b, err := io.ReadAll(lr)
		if err == nil {
			_, err = io.Copy(io.Discard, r)
		}
		c <- readResult{b, err}
	}()
	return c
}
