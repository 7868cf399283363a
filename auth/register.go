package auth

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// Registration is what `darling-sshd register` writes so that the host's
// root Nix daemon, and the ssh it runs, use the builder by its alias
// alone: an ssh_config Host block, the host key under the alias in a
// known_hosts file, and a line in Nix's machines file. Every path is a
// field, so that tests register on temporary files.
type Registration struct {
	// Builder is the builder as Nix and ssh see it. Its KnownHosts is the
	// file register writes the host key to; PublicHostKey must be set.
	Builder Builder
	// SSHConfigDir is the folder the system ssh includes
	// (/etc/ssh/ssh_config.d); the block goes there, as
	// darling-sshd-ALIAS.conf, when SystemSSHConfig includes it.
	SSHConfigDir string
	// SystemSSHConfig is the system ssh's configuration (/etc/ssh/ssh_config).
	SystemSSHConfig string
	// UserSSHConfig is root's own configuration (/root/.ssh/config): the
	// block goes there, marked, when the system ssh includes no folder.
	UserSSHConfig string
	// Machines is Nix's machines file (/etc/nix/machines).
	Machines string
}

// FileChange is what register does to one file: its content before and
// after. A nil New removes the file.
type FileChange struct {
	Path     string
	Old, New []byte
	Existed  bool
	Mode     fs.FileMode // for a file register creates
}

// Changed reports whether the change does anything.
func (c FileChange) Changed() bool {
	if c.New == nil {
		return c.Existed
	}
	return !c.Existed || !bytes.Equal(c.Old, c.New)
}

// maxRegisterFile bounds what register reads of a configuration file.
const maxRegisterFile = 4 << 20

// registerMark is the comment that marks what register wrote, so that a
// second run replaces it and --undo removes it and nothing else.
const registerMark = "darling-sshd register"

// IncludePath is the file the block goes to in SSHConfigDir.
func (r *Registration) IncludePath() string {
	return filepath.Join(r.SSHConfigDir, "darling-sshd-"+r.Builder.Alias+".conf")
}

// Plan computes the changes to register the builder, or with undo to
// remove what an earlier register wrote. It writes nothing.
func (r *Registration) Plan(undo bool) ([]FileChange, error) {
	if err := r.Builder.Check(); err != nil {
		return nil, err
	}
	if !undo && (r.Builder.PublicHostKey == nil || r.Builder.KnownHosts == "" || r.Builder.Host == "") {
		return nil, errors.New("register needs the server's address, its host key and a known_hosts file")
	}
	included, err := r.SystemIncludes()
	if err != nil {
		return nil, err
	}
	var changes []FileChange
	add := func(path string, mode fs.FileMode, edit func(old []byte) []byte) error {
		c, err := planFile(path, mode, edit)
		changes = append(changes, c)
		return err
	}
	block := "# Written by " + registerMark + "; `darling-sshd register --undo` removes it.\n" + r.Builder.SSHConfig()
	errs := []error{
		add(r.IncludePath(), 0o644, func(old []byte) []byte {
			if undo || !included {
				if old != nil && !bytes.HasPrefix(old, []byte("# Written by "+registerMark)) {
					return old // a person's file of that name: not ours to remove
				}
				return nil
			}
			return []byte(block)
		}),
		add(r.UserSSHConfig, 0o600, func(old []byte) []byte {
			return editMarkedBlock(old, r.Builder.Alias, block, undo || included)
		}),
		add(r.Builder.KnownHosts, 0o644, func(old []byte) []byte {
			return editKnownHosts(old, r.Builder, undo)
		}),
		add(r.Machines, 0o644, func(old []byte) []byte {
			return editMachines(old, r.Builder, undo)
		}),
	}
	return changes, errors.Join(errs...)
}

// SystemIncludes reports whether the system ssh configuration includes
// IncludePath unconditionally: an Include line, before any Host or Match,
// whose pattern matches it.
func (r *Registration) SystemIncludes() (bool, error) {
	b, err := ReadBounded(r.SystemSSHConfig)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	target := r.IncludePath()
	for _, line := range strings.Split(string(b), "\n") {
		fields := strings.Fields(strings.Replace(strings.TrimSpace(line), "=", " ", 1))
		if len(fields) == 0 || strings.HasPrefix(fields[0], "#") {
			continue
		}
		switch strings.ToLower(fields[0]) {
		case "host", "match":
			return false, nil
		case "include":
			for _, pat := range fields[1:] {
				if !filepath.IsAbs(pat) {
					pat = filepath.Join(filepath.Dir(r.SystemSSHConfig), pat)
				}
				if ok, _ := filepath.Match(pat, target); ok {
					return true, nil
				}
			}
		}
	}
	return false, nil
}

// planFile reads path (bounded) and returns the change edit makes to it.
// A symbolic link is followed, so that the file it names is changed and
// the link kept; a link into the Nix store (NixOS's /etc/nix/machines,
// a home-manager config) is refused: the next activation would put the
// link back and the change would vanish.
func planFile(path string, mode fs.FileMode, edit func(old []byte) []byte) (FileChange, error) {
	c := FileChange{Path: path, Mode: mode}
	if st, err := os.Lstat(path); err == nil && st.Mode()&fs.ModeSymlink != 0 {
		target, err := filepath.EvalSymlinks(path)
		if err != nil {
			return c, fmt.Errorf("%s: %w", path, err)
		}
		if strings.HasPrefix(target, "/nix/store/") || strings.HasPrefix(target, "/etc/static/") {
			return c, fmt.Errorf("%s links into the Nix store (%s): NixOS manages it; use the NixOS module (nix/module.nix) or nix.buildMachines and programs.ssh instead of register", path, target)
		}
		c.Path = target
	}
	b, err := ReadBounded(c.Path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return c, err
	default:
		c.Old, c.Existed = b, true
	}
	c.New = edit(c.Old)
	return c, nil
}

// ReadBounded reads a regular file of at most maxRegisterFile bytes.
func ReadBounded(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("stat %s: %w", path, err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s: not a regular file", path)
	}
	b, err := io.ReadAll(io.LimitReader(f, maxRegisterFile+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if len(b) > maxRegisterFile {
		return nil, fmt.Errorf("%s: larger than %d bytes", path, maxRegisterFile)
	}
	return b, nil
}

// Apply makes the changes: each file written atomically, keeping the mode
// of one that exists, its folder created (0755, or 0700 for ~/.ssh) if
// missing; a file whose new content is nil is removed.
func Apply(changes []FileChange) error {
	for _, c := range changes {
		if !c.Changed() {
			continue
		}
		if c.New == nil {
			if err := os.Remove(c.Path); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("remove %s: %w", c.Path, err)
			}
			continue
		}
		mode := c.Mode
		if st, err := os.Stat(c.Path); err == nil {
			mode = st.Mode().Perm()
		}
		dirMode := fs.FileMode(0o755)
		if filepath.Base(filepath.Dir(c.Path)) == ".ssh" {
			dirMode = 0o700
		}
		if err := os.MkdirAll(filepath.Dir(c.Path), dirMode); err != nil {
			return fmt.Errorf("create the folder of %s: %w", c.Path, err)
		}
		if err := writeFileAtomic(c.Path, c.New, mode); err != nil {
			return fmt.Errorf("write %s: %w", c.Path, err)
		}
	}
	return nil
}

// Describe says what the change does, with the lines it removes (-) and
// adds (+).
func (c FileChange) Describe() string {
	switch {
	case !c.Changed():
		return c.Path + ": unchanged\n"
	case c.New == nil:
		return c.Path + ": remove\n" + prefixLines("- ", c.Old)
	case !c.Existed:
		return c.Path + ": create\n" + prefixLines("+ ", c.New)
	}
	oldLines, newLines := lineSet(c.Old), lineSet(c.New)
	var b strings.Builder
	b.WriteString(c.Path + ": update\n")
	for _, l := range strings.SplitAfter(string(c.Old), "\n") {
		if l != "" && !newLines[l] {
			b.WriteString("- " + strings.TrimSuffix(l, "\n") + "\n")
		}
	}
	for _, l := range strings.SplitAfter(string(c.New), "\n") {
		if l != "" && !oldLines[l] {
			b.WriteString("+ " + strings.TrimSuffix(l, "\n") + "\n")
		}
	}
	return b.String()
}

func lineSet(b []byte) map[string]bool {
	m := map[string]bool{}
	for _, l := range strings.SplitAfter(string(b), "\n") {
		m[l] = true
	}
	return m
}

func prefixLines(p string, b []byte) string {
	var s strings.Builder
	for _, l := range strings.SplitAfter(string(b), "\n") {
		if l != "" {
			s.WriteString(p + strings.TrimSuffix(l, "\n") + "\n")
		}
	}
	return s.String()
}

// lines splits text into lines without their newlines; a last line
// without newline counts.
func lines(b []byte) []string {
	s := strings.TrimSuffix(string(b), "\n")
	if s == "" {
		return nil
	}
	return strings.Split(s, "\n")
}

// joinLines is lines' inverse: nil for no line, so that an emptied file
// is removed only when the caller says so.
func joinLines(ls []string) []byte {
	if len(ls) == 0 {
		return []byte{}
	}
	return []byte(strings.Join(ls, "\n") + "\n")
}

// editMarkedBlock replaces the alias's marked block in an ssh config with
// block (first in the file, where ssh's first-match rule lets it win), or
// removes it.
func editMarkedBlock(old []byte, alias, block string, remove bool) []byte {
	begin, end := "# "+registerMark+" "+alias+" begin", "# "+registerMark+" "+alias+" end"
	var kept []string
	in := false
	for _, l := range lines(old) {
		switch t := strings.TrimSuffix(l, "\r"); {
		case t == begin:
			in = true
		case t == end && in:
			in = false
		case !in && (l != "" || len(kept) > 0):
			// Blank lines at the top are the separator after a block.
			kept = append(kept, l)
		}
	}
	if remove {
		if old == nil {
			return nil
		}
		return joinLines(kept)
	}
	out := append([]string{begin}, lines([]byte(block))...)
	// Options before the first Host in the file apply to every host; put
	// after our Host, they would apply to the builder only. Host * ends
	// our block, so that they stay global.
	out = append(out, "Host *", end)
	if len(kept) > 0 {
		out = append(out, "")
		out = append(out, kept...)
	}
	return joinLines(out)
}

// editKnownHosts replaces the lines for the alias with one trusting the
// host key, marked; undo removes only marked lines.
func editKnownHosts(old []byte, b Builder, undo bool) []byte {
	var kept []string
	for _, l := range lines(old) {
		f := strings.Fields(l)
		marked := strings.HasSuffix(l, " "+registerMark+" "+b.Alias)
		aliasLine := len(f) > 0 && !strings.HasPrefix(f[0], "#") && hostsName(f[0], b.Alias)
		if marked || (!undo && aliasLine) {
			continue
		}
		kept = append(kept, l)
	}
	if undo {
		if old == nil {
			return nil
		}
		return joinLines(kept)
	}
	return joinLines(append(kept, b.Alias+" "+AuthorizedKeyLine(b.PublicHostKey)+" "+registerMark+" "+b.Alias))
}

// hostsName reports whether a known_hosts host field (a comma-separated
// list, hashed names aside) names name.
func hostsName(field, name string) bool {
	for _, h := range strings.Split(field, ",") {
		if h == name {
			return true
		}
	}
	return false
}

// editMachines replaces the builder's line in a machines file, marked by
// the comment line before it, and any unmarked line for the same alias (a
// line appended by hand earlier would make Nix see two builders); undo
// removes only the marked line.
func editMachines(old []byte, b Builder, undo bool) []byte {
	mark := "# " + registerMark + " " + b.Alias
	var kept []string
	skipNext := false
	for _, l := range lines(old) {
		switch {
		case skipNext && MachineHost(l) == b.Alias:
			skipNext = false
			continue
		case strings.TrimSuffix(l, "\r") == mark:
			skipNext = true
			continue
		case !undo && MachineHost(l) == b.Alias:
			continue
		}
		skipNext = false
		kept = append(kept, l)
	}
	if undo {
		if old == nil {
			return nil
		}
		return joinLines(kept)
	}
	return joinLines(append(kept, mark, b.MachinesLine()))
}

// MachineHost returns the host a machines line names (the part of its
// URI after the scheme and user), or "" for a comment or empty line.
func MachineHost(line string) string {
	line, _, _ = strings.Cut(line, "#")
	f := strings.Fields(line)
	if len(f) == 0 {
		return ""
	}
	uri := f[0]
	if _, rest, ok := strings.Cut(uri, "://"); ok {
		uri = rest
	}
	if _, host, ok := strings.Cut(uri, "@"); ok {
		uri = host
	}
	host, _, _ := strings.Cut(uri, "?")
	return host
}

// Machine is one line of a machines file, as Nix reads it.
type Machine struct {
	URI, Protocol, Host string
	Identity            string // "" for "-"
	PublicHostKey       string // base64, "" for "-"
}

// FindMachine returns the machines file's line for alias.
func FindMachine(text []byte, alias string) (Machine, bool) {
	for _, l := range lines(text) {
		if MachineHost(l) != alias {
			continue
		}
		l, _, _ = strings.Cut(l, "#")
		f := strings.Fields(l)
		m := Machine{URI: f[0], Host: alias, Protocol: "ssh"}
		if p, _, ok := strings.Cut(f[0], "://"); ok {
			m.Protocol = p
		}
		if len(f) > 2 && f[2] != "-" {
			m.Identity = f[2]
		}
		if len(f) > 7 && f[7] != "-" {
			m.PublicHostKey = f[7]
		}
		return m, true
	}
	return Machine{}, false
}
