package sshserver

import (
	"encoding/binary"
	"errors"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pkg/sftp"
	"golang.org/x/sys/unix"
)

// rootFS serves SFTP requests inside a root folder, with every path
// resolved by the kernel as if the root were "/": openat2 with
// RESOLVE_IN_ROOT. An absolute symlink inside (the Nix profiles) points
// inside, and neither ".." nor any symlink, old or made over SFTP, reaches
// above the root. (os.Root refuses absolute symlinks even when they stay
// inside, so it is not enough.)
type rootFS struct {
	root  *os.File // O_PATH directory
	log   *slog.Logger
	files *openFiles // the session's open files (sftpwire.go)

	// The prefix's user and group names, read at the first listing
	// (see sftpnames.go).
	namesOnce     sync.Once
	users, groups idNames
}

const resolve = unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS

// rel turns an SFTP path into one relative to the root.
func rel(p string) string {
	r := path.Clean("/" + p)[1:]
	if r == "" {
		return "."
	}
	return r
}

// open opens p inside the root.
func (r *rootFS) open(p string, flags int, mode uint32) (*os.File, error) {
	fd, err := unix.Openat2(int(r.root.Fd()), rel(p), &unix.OpenHow{
		Flags:   uint64(flags | unix.O_CLOEXEC),
		Mode:    uint64(mode),
		Resolve: resolve,
	})
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: p, Err: err}
	}
	return os.NewFile(uintptr(fd), path.Clean("/"+p)), nil
}

// parent opens the folder holding p and returns it with p's last element.
// The root itself has no parent: changing it is refused.
func (r *rootFS) parent(p string) (*os.File, string, error) {
	clean := path.Clean("/" + p)
	if clean == "/" {
		return nil, "", &fs.PathError{Op: "resolve", Path: p, Err: unix.EPERM}
	}
	dir, err := r.open(path.Dir(clean), unix.O_PATH|unix.O_DIRECTORY, 0)
	return dir, path.Base(clean), err
}

// withParent runs f on p's parent folder and last element.
func (r *rootFS) withParent(p string, f func(dirfd int, base string) error) error {
	dir, base, err := r.parent(p)
	if err != nil {
		return err
	}
	defer dir.Close()
	if err := f(int(dir.Fd()), base); err != nil {
		return &fs.PathError{Op: "sftp", Path: p, Err: err}
	}
	return nil
}

// openFile opens a file as OpenSSH's sftp-server does (process_open):
// read, write or both as the open flags say (req.Pflags), with append,
// create, truncate and exclusive; a file it creates gets the
// permissions of the open's attributes, if they carry any, else 0666,
// less the server's umask either way. A file opened to append writes at
// its end (appendOrder).
func (r *rootFS) openFile(req *sftp.Request) (*sftpFile, error) {
	id, mode, err := openAttrs(req.Attrs)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: req.Filepath, Err: err}
	}
	pf := req.Pflags()
	flags := unix.O_RDONLY
	switch {
	case pf.Read && pf.Write:
		flags = unix.O_RDWR
	case pf.Write:
		flags = unix.O_WRONLY
	}
	if pf.Append {
		flags |= unix.O_APPEND
	}
	if pf.Creat {
		flags |= unix.O_CREAT
	} else {
		mode = 0 // openat2 takes a mode only to create
	}
	if pf.Trunc {
		flags |= unix.O_TRUNC
	}
	if pf.Excl {
		flags |= unix.O_EXCL
	}
	f, err := r.open(req.Filepath, flags, mode)
	if err != nil {
		return nil, err
	}
	sf := &sftpFile{File: f, log: r.log, files: r.files}
	if pf.Append {
		sf.app = newAppendOrder()
	}
	r.files.opened(id, sf)
	return sf, nil
}

// openAttrs reads what the wire put in front of an open's attributes
// (the request id and the attribute flags), and the permissions among
// the attributes: 0666 if they carry none, as in OpenSSH.
func openAttrs(b []byte) (id, mode uint32, err error) {
	if len(b) < 8 {
		return 0, 0, errors.New("open request without its attribute flags")
	}
	id, flags, b := binary.BigEndian.Uint32(b), binary.BigEndian.Uint32(b[4:]), b[8:]
	if flags&attrPermissions == 0 {
		return id, 0o666, nil
	}
	at := 0
	if flags&attrSize != 0 {
		at += 8
	}
	if flags&attrUIDGID != 0 {
		at += 8
	}
	if len(b) < at+4 {
		return 0, 0, errors.New("open request: attributes too short")
	}
	return id, binary.BigEndian.Uint32(b[at:]) & 0o7777, nil
}

// sftpFile is a file open over SFTP. It logs its first failed write (a
// full disk, say): the client sees the error, the log says which file and
// why.
type sftpFile struct {
	*os.File
	log    *slog.Logger
	files  *openFiles
	logged atomic.Bool
	// app orders the writes of a file opened to append; nil otherwise.
	app *appendOrder

	// Under files.mu: the handle pkg/sftp gave it, and whether it is
	// closing.
	handle string
	closed bool
}

// WriteAt writes p at off; a file opened to append writes it at its end,
// in its turn (off is its number, see appendOrder).
func (f *sftpFile) WriteAt(p []byte, off int64) (int, error) {
	var n int
	var err error
	if f.app != nil {
		n, err = f.app.write(f.File, p, off)
	} else {
		n, err = f.File.WriteAt(p, off)
	}
	if err != nil && f.logged.CompareAndSwap(false, true) {
		f.log.Warn("sftp write failed", "file", f.Name(), "err", err)
	}
	return n, err
}

// Close forgets the file's handle, wakes writes waiting for their turn,
// and closes it.
func (f *sftpFile) Close() error {
	f.files.closing(f)
	if f.app != nil {
		f.app.close()
	}
	return f.File.Close()
}

// appendOrder runs the writes to a file opened to append one at a time,
// at the file's end (O_APPEND), in the order the client sent them, as
// OpenSSH's sftp-server, which serves requests one after another, does:
// pkg/sftp runs writes on several workers at once, so two writes of one
// upload could otherwise land in the wrong order. The wire numbers each
// write to an append handle as it reads it (issue) and passes the number
// as the write's offset, top bit set; a copy-data into the file takes a
// number too. A write without a number (the wire did not know the handle)
// is appended when it comes.
type appendOrder struct {
	issued atomic.Uint64 // numbers given out; the wire's reader only

	mu     sync.Mutex
	turned *sync.Cond
	next   uint64 // whose turn it is
	closed bool
}

func newAppendOrder() *appendOrder {
	a := &appendOrder{}
	a.turned = sync.NewCond(&a.mu)
	return a
}

// issue takes the next number.
func (a *appendOrder) issue() uint64 { return a.issued.Add(1) - 1 }

// wait waits for n's turn; false if the file closed first.
func (a *appendOrder) wait(n uint64) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	for a.next != n && !a.closed {
		a.turned.Wait()
	}
	return !a.closed
}

// done passes the turn on.
func (a *appendOrder) done() {
	a.mu.Lock()
	a.next++
	a.mu.Unlock()
	a.turned.Broadcast()
}

// close wakes every write still waiting: the file is closing.
func (a *appendOrder) close() {
	a.mu.Lock()
	a.closed = true
	a.mu.Unlock()
	a.turned.Broadcast()
}

// write appends p in the turn off names.
func (a *appendOrder) write(f *os.File, p []byte, off int64) (int, error) {
	if off >= 0 {
		return f.Write(p)
	}
	if !a.wait(uint64(off) &^ stampBit) {
		return 0, os.ErrClosed
	}
	defer a.done()
	return f.Write(p)
}

// Filecmd runs setstat, rename, remove, mkdir, rmdir, link and symlink.
func (r *rootFS) Filecmd(req *sftp.Request) error {
	switch req.Method {
	case "Setstat":
		return r.setstat(req)
	case "Rename":
		return r.rename(req.Filepath, req.Target, unix.RENAME_NOREPLACE)
	case "Rmdir":
		return r.withParent(req.Filepath, func(d int, b string) error { return unix.Unlinkat(d, b, unix.AT_REMOVEDIR) })
	case "Remove":
		return r.withParent(req.Filepath, func(d int, b string) error { return unix.Unlinkat(d, b, 0) })
	case "Mkdir":
		mode := uint32(0o755)
		if a := req.Attributes(); a != nil && req.AttrFlags().Permissions {
			mode = a.Mode & 0o7777
		}
		return r.withParent(req.Filepath, func(d int, b string) error { return unix.Mkdirat(d, b, mode) })
	case "Symlink":
		// Target is where the link goes; Filepath is what it points to,
		// stored as sent: resolved later, it stays inside the root.
		return r.withParent(req.Target, func(d int, b string) error { return unix.Symlinkat(req.Filepath, d, b) })
	case "Link":
		if c, ok := r.files.takeCopy(req.Filepath); ok {
			return r.copyData(c)
		}
		return r.withParent(req.Filepath, func(od int, ob string) error {
			return r.withParent(req.Target, func(nd int, nb string) error { return unix.Linkat(od, ob, nd, nb, 0) })
		})
	}
	return sftp.ErrSSHFxOpUnsupported
}

// PosixRename renames, replacing the target.
func (r *rootFS) PosixRename(req *sftp.Request) error {
	return r.rename(req.Filepath, req.Target, 0)
}

func (r *rootFS) rename(from, to string, flags uint) error {
	return r.withParent(from, func(od int, ob string) error {
		return r.withParent(to, func(nd int, nb string) error { return unix.Renameat2(od, ob, nd, nb, flags) })
	})
}

// setstat changes size, mode, owner and times, following a symlink inside
// the root as chmod does. The file is opened O_PATH in the root and
// changed through /proc/self/fd, so no path is resolved on the host.
func (r *rootFS) setstat(req *sftp.Request) error {
	flags, attrs := req.AttrFlags(), req.Attributes()
	if attrs == nil {
		// Attributes shorter than their flags say.
		return sftp.ErrSSHFxBadMessage
	}
	if flags.Size {
		f, err := r.open(req.Filepath, unix.O_WRONLY, 0)
		if err != nil {
			return err
		}
		err = f.Truncate(int64(attrs.Size))
		f.Close()
		if err != nil {
			return err
		}
	}
	if !flags.Permissions && !flags.UidGid && !flags.Acmodtime {
		return nil
	}
	f, err := r.open(req.Filepath, unix.O_PATH, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	byFd := "/proc/self/fd/" + strconv.Itoa(int(f.Fd()))
	if flags.Permissions {
		if err := unix.Chmod(byFd, attrs.Mode&0o7777); err != nil {
			return &fs.PathError{Op: "chmod", Path: req.Filepath, Err: err}
		}
	}
	if flags.UidGid {
		if err := unix.Fchownat(int(f.Fd()), "", int(attrs.UID), int(attrs.GID), unix.AT_EMPTY_PATH); err != nil {
			return &fs.PathError{Op: "chown", Path: req.Filepath, Err: err}
		}
	}
	if flags.Acmodtime {
		ts := []unix.Timespec{unix.NsecToTimespec(int64(attrs.Atime) * 1e9), unix.NsecToTimespec(int64(attrs.Mtime) * 1e9)}
		if err := unix.UtimesNano(byFd, ts); err != nil {
			return &fs.PathError{Op: "utimes", Path: req.Filepath, Err: err}
		}
	}
	return nil
}

// Filelist lists a folder, or stats a path (following symlinks).
func (r *rootFS) Filelist(req *sftp.Request) (sftp.ListerAt, error) {
	switch req.Method {
	case "List":
		return r.list(req.Filepath)
	case "Stat":
		fi, err := r.stat(req.Filepath, 0)
		return listerAt{fi}, err
	case "Readlink":
		target, err := r.Readlink(req.Filepath)
		return listerAt{fileInfo{name: target}}, err
	}
	return nil, sftp.ErrSSHFxOpUnsupported
}

// Lstat stats a path without following a final symlink.
func (r *rootFS) Lstat(req *sftp.Request) (sftp.ListerAt, error) {
	fi, err := r.stat(req.Filepath, unix.O_NOFOLLOW)
	return listerAt{fi}, err
}

// Readlink returns a symlink's target as stored.
func (r *rootFS) Readlink(p string) (string, error) {
	var target string
	err := r.withParent(p, func(d int, b string) error {
		buf := make([]byte, unix.PathMax)
		n, err := unix.Readlinkat(d, b, buf)
		if err != nil {
			return err
		}
		target = string(buf[:n])
		return nil
	})
	return target, err
}

func (r *rootFS) stat(p string, flags int) (os.FileInfo, error) {
	f, err := r.open(p, unix.O_PATH|flags, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return nil, &fs.PathError{Op: "stat", Path: p, Err: err}
	}
	return fileInfo{name: path.Base(path.Clean("/" + p)), st: st}, nil
}

func (r *rootFS) list(p string) (sftp.ListerAt, error) {
	dir, err := r.open(p, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return nil, err
	}
	defer dir.Close()
	names, err := dir.Readdirnames(-1)
	if err != nil {
		return nil, err
	}
	infos := make(listerAt, 0, len(names))
	for _, name := range names {
		var st unix.Stat_t
		if err := unix.Fstatat(int(dir.Fd()), name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			continue // gone since it was listed
		}
		infos = append(infos, fileInfo{name: name, st: st})
	}
	return infos, nil
}

// listerAt serves a fixed list of entries.
type listerAt []os.FileInfo

func (l listerAt) ListAt(dst []os.FileInfo, off int64) (int, error) {
	if off >= int64(len(l)) {
		return 0, io.EOF
	}
	n := copy(dst, l[off:])
	if n < len(dst) {
		return n, io.EOF
	}
	return n, nil
}

// fileInfo is an os.FileInfo from a stat of a file inside the root; Uid
// and Gid give pkg/sftp the owner.
type fileInfo struct {
	name string
	st   unix.Stat_t
}

func (f fileInfo) Name() string       { return f.name }
func (f fileInfo) Size() int64        { return f.st.Size }
func (f fileInfo) ModTime() time.Time { return time.Unix(f.st.Mtim.Unix()) }
func (f fileInfo) IsDir() bool        { return f.Mode().IsDir() }
func (f fileInfo) Sys() any           { return &f.st }
func (f fileInfo) Uid() uint32        { return f.st.Uid }
func (f fileInfo) Gid() uint32        { return f.st.Gid }

func (f fileInfo) Mode() fs.FileMode {
	m := fs.FileMode(f.st.Mode & 0o777)
	switch f.st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		m |= fs.ModeDir
	case unix.S_IFLNK:
		m |= fs.ModeSymlink
	case unix.S_IFIFO:
		m |= fs.ModeNamedPipe
	case unix.S_IFSOCK:
		m |= fs.ModeSocket
	case unix.S_IFCHR:
		m |= fs.ModeDevice | fs.ModeCharDevice
	case unix.S_IFBLK:
		m |= fs.ModeDevice
	}
	if f.st.Mode&unix.S_ISUID != 0 {
		m |= fs.ModeSetuid
	}
	if f.st.Mode&unix.S_ISGID != 0 {
		m |= fs.ModeSetgid
	}
	if f.st.Mode&unix.S_ISVTX != 0 {
		m |= fs.ModeSticky
	}
	return m
}
