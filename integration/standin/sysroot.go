package main

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
)

// profileLine is what the system root's /etc/profile prints on stdout, in
// place of Darling's path_helper noise.
const profileLine = "darling-standin: /etc/profile ran (Darling's runs path_helper)"

// ensureInstall returns <exe>.install, the stand-in's counterpart of
// Darling's installation prefix: bin/{darlingserver,launchd,shellspawn} are
// links to the executable (so that those processes have those names), and
// libexec/darling is the system root, the overlay's lower layer. It is
// built once, in a temporary folder renamed into place, so that parallel
// callers neither race nor see it half-built.
func ensureInstall(exe string) (string, error) {
	dir := exe + ".install"
	if _, err := os.Stat(filepath.Join(dir, "libexec", "darling")); err == nil {
		return dir, nil
	}
	tmp, err := os.MkdirTemp(filepath.Dir(exe), ".standin-install-")
	if err != nil {
		return "", err
	}
	if err := buildInstall(tmp, filepath.Base(exe)); err != nil {
		os.RemoveAll(tmp)
		return "", err
	}
	if err := os.Rename(tmp, dir); err != nil {
		os.RemoveAll(tmp)
		if _, serr := os.Stat(filepath.Join(dir, "libexec", "darling")); serr == nil {
			return dir, nil // built by someone else meanwhile
		}
		return "", err
	}
	return dir, nil
}

// installDir returns the install folder of the running binary: the
// launcher's <exe>.install, or the folder a copy in <exe>.install/bin runs
// from.
func installDir() (string, error) {
	self, err := os.Executable()
	if err != nil {
		return "", err
	}
	self, _ = filepath.Abs(self)
	if bin := filepath.Dir(self); filepath.Base(bin) == "bin" && strings.HasSuffix(filepath.Dir(bin), ".install") {
		return filepath.Dir(bin), nil
	}
	return self + ".install", nil
}

func copyExecutable(src, dst string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, b, 0o755)
}

// buildInstall fills tmp, the install folder being built, with the
// launcher's copy exeBase (next to tmp) and the system root.
func buildInstall(tmp, exeBase string) error {
	if err := os.Chmod(tmp, 0o755); err != nil {
		return err
	}
	root := filepath.Join(tmp, "libexec", "darling")
	if err := makeInstallDirs(tmp); err != nil {
		return err
	}
	if err := installBinaries(tmp, exeBase); err != nil {
		return err
	}
	links, err := systemRootLinks()
	if err != nil {
		return err
	}
	for name, target := range links {
		if err := os.Symlink(target, filepath.Join(root, name)); err != nil {
			return err
		}
	}
	if err := writeSystemFiles(root); err != nil {
		return err
	}
	if _, err := os.Stat(filepath.Join(root, "private/etc/profile")); err != nil {
		return errors.New("system root: no profile")
	}
	return nil
}

// makeInstallDirs creates the install folder's directories, with their
// modes set whatever the umask.
func makeInstallDirs(tmp string) error {
	dirs := []struct {
		path string
		mode os.FileMode
	}{
		{"bin", 0o755}, {"libexec", 0o755}, {"libexec/darling", 0o755},
		{"libexec/darling/private", 0o755}, {"libexec/darling/private/etc", 0o755},
		{"libexec/darling/private/etc/profile.d", 0o755},
		{"libexec/darling/private/tmp", 0o1777}, {"libexec/darling/private/var", 0o755},
		{"libexec/darling/private/var/tmp", 0o1777}, {"libexec/darling/private/var/run", 0o755},
		{"libexec/darling/private/var/root", 0o755},
		{"libexec/darling/usr", 0o755}, {"libexec/darling/usr/local", 0o755},
		{"libexec/darling/usr/local/bin", 0o755},
		{"libexec/darling/dev", 0o755}, {"libexec/darling/proc", 0o555},
		{"libexec/darling/Volumes", 0o755}, {"libexec/darling/Volumes/SystemRoot", 0o755},
		{"libexec/darling/System", 0o755}, {"libexec/darling/System/Library", 0o755},
	}
	for _, d := range dirs {
		p := filepath.Join(tmp, d.path)
		if err := os.Mkdir(p, d.mode); err != nil {
			return err
		}
		if err := os.Chmod(p, d.mode); err != nil {
			return err
		}
	}
	return nil
}

// installBinaries puts bin/darlingserver, bin/launchd and bin/shellspawn
// in tmp: one copy of the launcher exeBase, under three names.
//
// Copies, not links to the launcher: like Darling's own installed
// binaries, a running container outlives the launcher being replaced.
func installBinaries(tmp, exeBase string) error {
	exe := filepath.Join(filepath.Dir(tmp), exeBase)
	first := filepath.Join(tmp, "bin", "darlingserver")
	if err := copyExecutable(exe, first); err != nil {
		return err
	}
	for _, name := range []string{"launchd", "shellspawn"} {
		if err := os.Link(first, filepath.Join(tmp, "bin", name)); err != nil {
			return err
		}
	}
	return nil
}

// systemRootLinks returns the system root's symbolic links, by name in
// the root: macOS's /etc, /tmp and /var into /private, and the host's
// programs and libraries through /Volumes/SystemRoot (every /usr entry but
// local, and those of /bin, /sbin and /lib* that exist).
func systemRootLinks() (map[string]string, error) {
	links := map[string]string{"etc": "private/etc", "tmp": "private/tmp", "var": "private/var"}
	ents, err := os.ReadDir("/usr")
	if err != nil {
		return nil, err
	}
	for _, e := range ents {
		if e.Name() != "local" {
			links["usr/"+e.Name()] = systemRoot + "/usr/" + e.Name()
		}
	}
	for _, d := range []string{"bin", "sbin", "lib", "lib32", "lib64", "libx32"} {
		fi, err := os.Lstat("/" + d)
		if err != nil {
			continue
		}
		if fi.Mode()&os.ModeSymlink == 0 {
			links[d] = systemRoot + "/" + d
			continue
		}
		// A link (merged /usr: bin -> usr/bin) stays a link; an absolute
		// target is reached through /Volumes/SystemRoot.
		target, err := os.Readlink("/" + d)
		if err != nil {
			return nil, err
		}
		if strings.HasPrefix(target, "/") {
			target = systemRoot + target
		}
		links[d] = target
	}
	return links, nil
}

// writeSystemFiles writes the system root's passwd, group, shells and the
// noisy /etc/profile.
func writeSystemFiles(root string) error {
	files := map[string]string{
		"private/etc/passwd": "root:*:0:0:System Administrator:/var/root:/bin/sh\n" +
			"nobody:*:-2:-2:Unprivileged User:/var/empty:/usr/bin/false\n" +
			"daemon:*:1:1:System Services:/var/root:/usr/bin/false\n",
		"private/etc/group":  "wheel:*:0:root\ndaemon:*:1:root\nstaff:*:20:root\nnobody:*:-2:\n",
		"private/etc/shells": "/bin/bash\n/bin/sh\n",
		"private/etc/profile": "# System-wide .profile for sh(1): the darling stand-in's system root.\n" +
			"# Darling's runs path_helper here; this one prints a line on stdout, as\n" +
			"# noise from login files does, before every `darling shell` command.\n" +
			"echo \"" + profileLine + "\"\n" +
			"for f in /etc/profile.d/*.sh; do [ -r \"$f\" ] && . \"$f\"; done\n" +
			"unset f\n",
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(root, name), []byte(body), 0o644); err != nil {
			return err
		}
	}
	return nil
}
