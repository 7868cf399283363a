package sshserver

import (
	"bytes"
	"errors"
	"strconv"
	"unicode"
	"unicode/utf8"

	"github.com/darling-sshd/darling-sshd/darlingexec"
	"github.com/pkg/sftp"
	"golang.org/x/sys/unix"
)

// The owners `ls -l` shows over SFTP are named as the prefix names them:
// the files are the prefix's, and so are its users (a macOS prefix has
// gid 0 as wheel, where the host says root). pkg/sftp asks the FileList
// handler for the names when it implements sftp.NameLookupFileLister;
// without one, or for an id the prefix does not name, the number is shown.

const (
	// maxIDFile bounds what is read of the prefix's passwd and group: a
	// session can write them, and a larger one is not read at all. macOS's
	// own are under 16 KiB; reading takes a buffer of this size (0.2 ms
	// for both files at 256 KiB, 0.6 ms at 1 MiB).
	maxIDFile = 256 << 10
	// maxIDNames bounds the names kept from one file, so that what a
	// session wrote costs each SFTP session little memory.
	maxIDNames = 1 << 14
	// maxIDName bounds one name's length; a longer one is not a name.
	maxIDName = 64
)

// idFileDirs are the folders, below the prefix's root, where passwd and
// group are looked for, in order: a macOS prefix has /etc as a symlink to
// private/etc, which is never followed, so private/etc comes first; a
// Linux-like root has them in etc.
var idFileDirs = []string{"private/etc/", "etc/"}

// rootFS must stay a NameLookupFileLister: pkg/sftp checks for it at run
// time, and would show numbers without a word if it were not one.
var _ sftp.NameLookupFileLister = (*rootFS)(nil)

// LookupUserName names a uid as the prefix's passwd does, or returns it.
func (r *rootFS) LookupUserName(uid string) string {
	r.loadNames()
	return r.users.name(uid)
}

// LookupGroupName names a gid as the prefix's group does, or returns it.
func (r *rootFS) LookupGroupName(gid string) string {
	r.loadNames()
	return r.groups.name(gid)
}

// loadNames reads the prefix's passwd and group once per SFTP session, at
// the first listing: a session that only copies files never reads them,
// and one that lists many folders reads them once.
func (r *rootFS) loadNames() {
	r.namesOnce.Do(func() {
		r.users = r.readIDFile("passwd")
		r.groups = r.readIDFile("group")
	})
}

// readIDFile reads and parses the first of the prefix's files named name
// in idFileDirs that can be read. When none can, the ids stay numbers; why
// is logged at debug level, as a session can cause it at will.
func (r *rootFS) readIDFile(name string) idNames {
	var errs []error
	for _, dir := range idFileDirs {
		b, err := darlingexec.ReadFileBeneath(r.root, dir+name, maxIDFile)
		if err == nil {
			return parseIDNames(b)
		}
		if !errors.Is(err, unix.ENOENT) {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		r.log.Debug("sftp: owners shown as numbers", "file", name, "err", errors.Join(errs...))
	}
	return nil
}

// idNames maps the numeric ids of a passwd or group file to names.
type idNames map[uint32]string

// name returns the name of id, a decimal number as pkg/sftp formats it,
// or id itself when none is known.
func (n idNames) name(id string) string {
	v, err := strconv.ParseUint(id, 10, 32)
	if err != nil {
		return id
	}
	if s, ok := n[uint32(v)]; ok {
		return s
	}
	return id
}

// parseIDNames reads name:password:id:… lines, the layout passwd and group
// share, leniently: comments, blank lines and lines whose name or id is
// not one are skipped. The first name given an id wins, as getpwuid's.
// A negative id is its 32-bit two's complement: macOS's nobody is -2.
func parseIDNames(b []byte) idNames {
	names := idNames{}
	for len(b) > 0 && len(names) < maxIDNames {
		var line []byte
		line, b, _ = bytes.Cut(b, []byte{'\n'})
		if len(line) == 0 || line[0] == '#' {
			continue
		}
		f := bytes.SplitN(line, []byte{':'}, 4)
		if len(f) < 3 || !validIDName(f[0]) {
			continue
		}
		name, idField := f[0], f[2]
		id, err := strconv.ParseInt(string(idField), 10, 64)
		if err != nil || id < -1<<31 || id > 1<<32-1 {
			continue
		}
		if _, seen := names[uint32(id)]; !seen {
			names[uint32(id)] = string(name)
		}
	}
	return names
}

// validIDName reports whether b can stand as a name in `ls -l`: short,
// UTF-8, and with no space or control character (they would break the
// listing's columns or reach the client's terminal).
func validIDName(b []byte) bool {
	if len(b) == 0 || len(b) > maxIDName || !utf8.Valid(b) {
		return false
	}
	for _, c := range string(b) {
		if c == ' ' || !unicode.IsPrint(c) {
			return false
		}
	}
	return true
}
