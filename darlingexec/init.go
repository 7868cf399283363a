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
	// NixConf holds more nix.conf settings (--nix-conf), written after
	// init's own in this order; each passed ParseNixSetting, no key twice.
	NixConf []NixSetting
	Force   bool // overwrite a managed file a person edited
}

// nixConfPath is the prefix's Nix configuration.
const nixConfPath = "/etc/nix/nix.conf"

// managedHeader is the first line of the nix.conf init writes. Its wording
// may change between versions: only the tag line after it identifies the
// file as init's.
const managedHeader = "# Written by darling-sshd init from its flags (--nix-conf KEY=VALUE for other settings); init refuses to overwrite a hand edit without --force.\n"

// managedTag starts the line that marks a file as written by init, with
// the SHA-256 of what follows it, so that an edit by hand is noticed.
const managedTag = "# darling-sshd-managed sha256="

// Default garbage-collection thresholds: start collecting below 1 GiB
// free, stop at 4 GiB, so that a builder's disk does not fill. --nix-conf
// min-free=… or max-free=… replaces them.
const (
	defaultMinFree = "1073741824"
	defaultMaxFree = "4294967296"
)

// NixConf returns the nix.conf init writes, managed header included. The
// NixOS module's lib.nix builds the same text (a golden test checks).
//
// What a build as root in a single-user prefix needs, whether it comes
// through `nix-store --serve --write` (which imports the client's paths
// without checking signatures) or `nix-daemon --stdio` (which, with no
// daemon socket, serves the store itself and trusts its client): no build
// users, as the prefix has no nixbld group, and no sandbox, as Nix's macOS
// sandbox (sandbox-exec) does not work in Darling. Both are Nix's defaults
// on macOS, written anyway so that the file says so and a Linux Nix (the
// stand-in test fixture), whose sandbox is on by default, behaves alike.
// A derivation's system must be Nix's own or in extra-platforms: Darling's
// Nix is x86_64-darwin, so nothing is added here; a Linux Nix needs
// --nix-conf extra-platforms=x86_64-darwin.
func NixConf(o InitOptions) string {
	given := map[string]bool{}
	for _, s := range o.NixConf {
		given[s.Key] = true
	}
	var b strings.Builder
	b.WriteString("build-users-group =\n")
	b.WriteString("sandbox = false\n")
	b.WriteString("experimental-features = nix-command flakes\n")
	b.WriteString("trusted-users = root\n")
	b.WriteString("max-jobs = " + strconv.Itoa(o.MaxJobs) + "\n")
	if len(o.SystemFeatures) > 0 {
		b.WriteString("system-features = " + strings.Join(o.SystemFeatures, " ") + "\n")
	}
	if !given["min-free"] {
		b.WriteString("min-free = " + defaultMinFree + "\n")
	}
	if !given["max-free"] {
		b.WriteString("max-free = " + defaultMaxFree + "\n")
	}
	for _, s := range o.NixConf {
		b.WriteString(s.line())
	}
	body := b.String()
	sum := sha256.Sum256([]byte(body))
	return managedHeader + managedTag + hex.EncodeToString(sum[:]) + "\n" + body
}

// managedUnedited reports whether text is a managed file nobody edited:
// comment lines (init's header, in any version's wording), the tag line,
// and a body whose hash the tag holds.
func managedUnedited(text string) bool {
	rest := text
	for {
		line, after, ok := strings.Cut(rest, "\n")
		if !ok {
			return false
		}
		if sum, isTag := strings.CutPrefix(line, managedTag); isTag {
			want := sha256.Sum256([]byte(after))
			return sum == hex.EncodeToString(want[:])
		}
		if !strings.HasPrefix(line, "#") {
			return false
		}
		rest = after
	}
}

// ErrEdited is what Init returns, once its other steps are done, when a
// managed file a person edited was left alone.
var ErrEdited = errors.New("edited by hand")

// Init prepares the prefix for Nix through the launcher, inside the
// prefix, never by writing the prefix folder behind a running container.
// It is idempotent; each step reports one line to out. A managed file
// init wrote is rewritten whenever what init would write changes; one a
// person edited is kept (unless o.Force), with a diff to out, and Init
// then returns an error wrapping ErrEdited, so that the edit does not
// pass unnoticed in a service's start.
func (l *Launcher) Init(ctx context.Context, o InitOptions, out io.Writer) error {
	if err := CheckPrefix(l.Prefix); err != nil {
		return err
	}
	want := NixConf(o)
	have, err := l.run(ctx, "if [ -e "+nixConfPath+" ]; then cat "+nixConfPath+"; fi", "")
	if err != nil {
		return fmt.Errorf("read %s in the prefix: %w", nixConfPath, err)
	}
	var edited error
	handEdit := have != "" && !managedUnedited(have)
	switch {
	case have == want:
		fmt.Fprintf(out, "%s: unchanged\n", nixConfPath)
	case handEdit && !o.Force:
		fmt.Fprintf(out, "%s: edited by hand; left alone. What init would write instead:\n%s", nixConfPath, nixConfDiff(have, want))
		fmt.Fprintf(out, "%s: init --force overwrites it; pass a setting to keep with --nix-conf KEY=VALUE\n", nixConfPath)
		edited = fmt.Errorf("%s in the prefix: %w; left alone (init --force overwrites it)", nixConfPath, ErrEdited)
	default:
		if _, err := l.run(ctx, "mkdir -p /etc/nix && cat > "+nixConfPath+".tmp && mv "+nixConfPath+".tmp "+nixConfPath, want); err != nil {
			return fmt.Errorf("write %s in the prefix: %w", nixConfPath, err)
		}
		if handEdit {
			fmt.Fprintf(out, "%s: written over a hand edit (--force); what changed:\n%s", nixConfPath, nixConfDiff(have, want))
		} else {
			fmt.Fprintf(out, "%s: written\n", nixConfPath)
		}
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
	return edited
}

// nixConfDiff is the diff from the prefix's nix.conf as it is to what
// init would write.
func nixConfDiff(have, want string) string {
	return lineDiff(nixConfPath+" (in the prefix, as it is)", nixConfPath+" (as init would write it)", have, want)
}

// NixSetting is one nix.conf setting given with --nix-conf KEY=VALUE.
type NixSetting struct{ Key, Value string }

// line is the setting as a nix.conf line; an empty value (an empty list,
// as `substituters =`) is written as init writes build-users-group.
func (s NixSetting) line() string {
	if s.Value == "" {
		return s.Key + " =\n"
	}
	return s.Key + " = " + s.Value + "\n"
}

// String is the setting as --nix-conf takes it.
func (s NixSetting) String() string { return s.Key + "=" + s.Value }

// initSets says, for each setting init writes itself, why --nix-conf may
// not set it. min-free and max-free are not here: a --nix-conf value
// replaces init's default.
var initSets = map[string]string{
	"max-jobs":              "use --max-jobs",
	"extra-max-jobs":        "use --max-jobs",
	"system-features":       "use --system-features",
	"extra-system-features": "use --system-features",
	"build-users-group":     "builds run as root in a single-user prefix, with no build users",
	"sandbox":               "Nix's macOS sandbox does not work in Darling",
	"experimental-features": "add to it with extra-experimental-features",
	"trusted-users":         "add to it with extra-trusted-users",
}

// ParseNixSetting checks one --nix-conf KEY=VALUE. KEY is a Nix setting
// name (a letter, then letters, digits, '-' and '_'; "extra-KEY" appends
// to a list), not one init sets itself, and not nix.conf's include
// directive. VALUE is one line: nix.conf has no way to write a newline or
// NUL, and cuts a line at '#', so those are refused rather than written
// as something else. Spaces around either are dropped, as Nix drops them.
func ParseNixSetting(s string) (NixSetting, error) {
	k, v, ok := strings.Cut(s, "=")
	if !ok {
		return NixSetting{}, errors.New("want KEY=VALUE")
	}
	k, v = strings.TrimSpace(k), strings.TrimSpace(v)
	if err := checkNixKey(k); err != nil {
		return NixSetting{}, err
	}
	switch {
	case strings.ContainsAny(v, "\n\r"):
		return NixSetting{}, fmt.Errorf("value of %s: a line break cannot be written in nix.conf", k)
	case strings.Contains(v, "\x00"):
		return NixSetting{}, fmt.Errorf("value of %s: a NUL byte cannot be written in nix.conf", k)
	case strings.Contains(v, "#"):
		return NixSetting{}, fmt.Errorf("value of %s: '#' starts a comment in nix.conf", k)
	}
	return NixSetting{Key: k, Value: v}, nil
}

// checkNixKey checks a --nix-conf KEY.
func checkNixKey(k string) error {
	if k == "" {
		return errors.New("empty setting name")
	}
	for i, c := range k {
		letter := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
		if !letter && (i == 0 || !(c >= '0' && c <= '9' || c == '-' || c == '_')) {
			return fmt.Errorf("setting name %q: want a letter, then letters, digits, '-' or '_'", k)
		}
	}
	if k == "include" {
		return errors.New("include is nix.conf's directive, not a setting")
	}
	if why, ok := initSets[k]; ok {
		return fmt.Errorf("init sets %s itself: %s", strings.TrimPrefix(k, "extra-"), why)
	}
	return nil
}

// maxDiffCells bounds the table lineDiff fills: beyond it (a thousand
// changed lines each side) the diff shows every line that differs removed
// and added, rather than taking time and memory on a file that big.
const maxDiffCells = 1 << 20

// diffContext is how many unchanged lines a hunk shows around a change.
const diffContext = 3

// diffOp is one line of a diff: ' ' kept, '-' removed, '+' added.
type diffOp struct {
	kind byte
	line string // with its newline, if it has one
}

// lineDiff returns a unified-style diff from a to b, named aName and
// bName in its header, or "" if they are equal. It is a longest common
// subsequence over the lines, after the common start and end are set
// aside; lines not valid UTF-8 are shown with '?' in their place.
func lineDiff(aName, bName, a, b string) string {
	if a == b {
		return ""
	}
	ops := diffLines(splitLines(a), splitLines(b))
	var out strings.Builder
	fmt.Fprintf(&out, "--- %s\n+++ %s\n", aName, bName)
	for start := 0; start < len(ops); {
		h, next := nextHunk(ops, start)
		if h < 0 {
			break
		}
		writeHunk(&out, ops, h, next)
		start = next
	}
	return out.String()
}

// splitLines splits text into lines, each keeping its newline.
func splitLines(s string) []string {
	lines := strings.SplitAfter(s, "\n")
	if lines[len(lines)-1] == "" {
		lines = lines[:len(lines)-1]
	}
	return lines
}

// diffLines returns the edit script from a to b.
func diffLines(a, b []string) []diffOp {
	var ops []diffOp
	pre := 0
	for pre < len(a) && pre < len(b) && a[pre] == b[pre] {
		ops = append(ops, diffOp{' ', a[pre]})
		pre++
	}
	suf := 0
	for suf < len(a)-pre && suf < len(b)-pre && a[len(a)-1-suf] == b[len(b)-1-suf] {
		suf++
	}
	ma, mb := a[pre:len(a)-suf], b[pre:len(b)-suf]
	if len(ma)*len(mb) > maxDiffCells {
		for _, l := range ma {
			ops = append(ops, diffOp{'-', l})
		}
		for _, l := range mb {
			ops = append(ops, diffOp{'+', l})
		}
	} else {
		ops = append(ops, lcsOps(ma, mb)...)
	}
	for _, l := range a[len(a)-suf:] {
		ops = append(ops, diffOp{' ', l})
	}
	return ops
}

// lcsOps is the edit script from a to b along a longest common
// subsequence, removals before additions where a block changed.
func lcsOps(a, b []string) []diffOp {
	w := len(b) + 1
	// n[i*w+j] is the length of the longest common subsequence of a[i:]
	// and b[j:].
	n := make([]int, (len(a)+1)*w)
	for i := len(a) - 1; i >= 0; i-- {
		for j := len(b) - 1; j >= 0; j-- {
			if a[i] == b[j] {
				n[i*w+j] = n[(i+1)*w+j+1] + 1
			} else {
				n[i*w+j] = max(n[(i+1)*w+j], n[i*w+j+1])
			}
		}
	}
	var ops []diffOp
	i, j := 0, 0
	for i < len(a) || j < len(b) {
		switch {
		case i < len(a) && j < len(b) && a[i] == b[j]:
			ops = append(ops, diffOp{' ', a[i]})
			i, j = i+1, j+1
		case j == len(b) || i < len(a) && n[(i+1)*w+j] >= n[i*w+j+1]:
			ops = append(ops, diffOp{'-', a[i]})
			i++
		default:
			ops = append(ops, diffOp{'+', b[j]})
			j++
		}
	}
	return ops
}

// nextHunk returns the span [from, to) of ops of the next hunk at or
// after start: its changes, with up to diffContext kept lines around
// them; changes with at most twice that many kept lines between them share
// a hunk, as in diff -u. from is -1 when nothing changes after start.
func nextHunk(ops []diffOp, start int) (from, to int) {
	first := start
	for first < len(ops) && ops[first].kind == ' ' {
		first++
	}
	if first == len(ops) {
		return -1, len(ops)
	}
	last := first
	for k := first; k < len(ops) && k-last <= 2*diffContext+1; k++ {
		if ops[k].kind != ' ' {
			last = k
		}
	}
	return max(start, first-diffContext), min(len(ops), last+1+diffContext)
}

// writeHunk writes ops[from:to] as a hunk, with its line ranges counted
// from the whole of ops.
func writeHunk(out *strings.Builder, ops []diffOp, from, to int) {
	aLine, bLine := 0, 0 // lines of a and of b before from
	for _, op := range ops[:from] {
		if op.kind != '+' {
			aLine++
		}
		if op.kind != '-' {
			bLine++
		}
	}
	aLen, bLen := 0, 0
	for _, op := range ops[from:to] {
		if op.kind != '+' {
			aLen++
		}
		if op.kind != '-' {
			bLen++
		}
	}
	// A range of no lines starts at the line before it, as diff -u has it.
	if aLen > 0 {
		aLine++
	}
	if bLen > 0 {
		bLine++
	}
	fmt.Fprintf(out, "@@ -%d,%d +%d,%d @@\n", aLine, aLen, bLine, bLen)
	for _, op := range ops[from:to] {
		out.WriteByte(op.kind)
		line := strings.ToValidUTF8(op.line, "?")
		out.WriteString(line)
		if !strings.HasSuffix(line, "\n") {
			out.WriteString("\n\\ No newline at end of file\n")
		}
	}
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
