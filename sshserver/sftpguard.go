package sshserver

import (
	"errors"
	"io"
	"log/slog"
	"os"

	"github.com/pkg/sftp"
)

// sftpHandlers is what pkg/sftp's request workers call: rootFS, and the
// files and listings it returns, each call guarded. A panic becomes an
// SSH_FX_FAILURE for that request, logged with its stack and the
// session's fields; the SFTP session, the connection and the server go
// on. pkg/sftp checks its optional interfaces at run time; the
// assertions below keep them.
type sftpHandlers struct {
	fs   *rootFS
	log  *slog.Logger
	hook func(string)
}

var (
	_ sftp.OpenFileWriter       = sftpHandlers{}
	_ sftp.PosixRenameFileCmder = sftpHandlers{}
	_ sftp.LstatFileLister      = sftpHandlers{}
	_ sftp.ReadlinkFileLister   = sftpHandlers{}
	_ sftp.NameLookupFileLister = sftpHandlers{}
)

// handlers returns h as pkg/sftp's four handlers.
func (h sftpHandlers) handlers() sftp.Handlers {
	return sftp.Handlers{FileGet: h, FilePut: h, FileCmd: h, FileList: h}
}

// errInternal is what a request that panicked gets.
func errInternal() error { return errors.New("internal server error") }

// enter calls the test hook for a handler.
func (h sftpHandlers) enter(where string) {
	if h.hook != nil {
		h.hook("sftp." + where)
	}
}

func (h sftpHandlers) Fileread(req *sftp.Request) (r io.ReaderAt, err error) {
	defer contain(h.log, "sftp open for reading", func() { r, err = nil, errInternal() })
	h.enter("Fileread")
	f, err := h.fs.openFile(req)
	if err != nil {
		return nil, err
	}
	return guardedFile{f, h}, nil
}

func (h sftpHandlers) Filewrite(req *sftp.Request) (w io.WriterAt, err error) {
	defer contain(h.log, "sftp open for writing", func() { w, err = nil, errInternal() })
	h.enter("Filewrite")
	f, err := h.fs.openFile(req)
	if err != nil {
		return nil, err
	}
	return guardedFile{f, h}, nil
}

func (h sftpHandlers) OpenFile(req *sftp.Request) (rw sftp.WriterAtReaderAt, err error) {
	defer contain(h.log, "sftp open", func() { rw, err = nil, errInternal() })
	h.enter("OpenFile")
	f, err := h.fs.openFile(req)
	if err != nil {
		return nil, err
	}
	return guardedFile{f, h}, nil
}

func (h sftpHandlers) Filecmd(req *sftp.Request) (err error) {
	defer contain(h.log, "sftp "+req.Method, func() { err = errInternal() })
	h.enter("Filecmd")
	return h.fs.Filecmd(req)
}

func (h sftpHandlers) PosixRename(req *sftp.Request) (err error) {
	defer contain(h.log, "sftp posix-rename", func() { err = errInternal() })
	h.enter("PosixRename")
	return h.fs.PosixRename(req)
}

func (h sftpHandlers) Filelist(req *sftp.Request) (l sftp.ListerAt, err error) {
	defer contain(h.log, "sftp "+req.Method, func() { l, err = nil, errInternal() })
	h.enter("Filelist")
	l, err = h.fs.Filelist(req)
	if err != nil {
		return nil, err
	}
	return guardedLister{l, h}, nil
}

func (h sftpHandlers) Lstat(req *sftp.Request) (l sftp.ListerAt, err error) {
	defer contain(h.log, "sftp lstat", func() { l, err = nil, errInternal() })
	h.enter("Lstat")
	l, err = h.fs.Lstat(req)
	if err != nil {
		return nil, err
	}
	return guardedLister{l, h}, nil
}

func (h sftpHandlers) Readlink(p string) (target string, err error) {
	defer contain(h.log, "sftp readlink", func() { target, err = "", errInternal() })
	h.enter("Readlink")
	return h.fs.Readlink(p)
}

func (h sftpHandlers) LookupUserName(uid string) (name string) {
	defer contain(h.log, "sftp user name", func() { name = uid })
	h.enter("LookupUserName")
	return h.fs.LookupUserName(uid)
}

func (h sftpHandlers) LookupGroupName(gid string) (name string) {
	defer contain(h.log, "sftp group name", func() { name = gid })
	h.enter("LookupGroupName")
	return h.fs.LookupGroupName(gid)
}

// guardedFile is an open file whose calls are guarded.
type guardedFile struct {
	f *sftpFile
	h sftpHandlers
}

func (g guardedFile) ReadAt(p []byte, off int64) (n int, err error) {
	defer contain(g.h.log, "sftp read", func() { n, err = 0, errInternal() })
	g.h.enter("ReadAt")
	return g.f.ReadAt(p, off)
}

func (g guardedFile) WriteAt(p []byte, off int64) (n int, err error) {
	defer contain(g.h.log, "sftp write", func() { n, err = 0, errInternal() })
	g.h.enter("WriteAt")
	return g.f.WriteAt(p, off)
}

func (g guardedFile) Close() (err error) {
	defer contain(g.h.log, "sftp close", func() {
		err = errInternal()
		_ = g.f.Close() // its handle, its waiting writes, its descriptor
	})
	g.h.enter("Close")
	return g.f.Close()
}

// guardedLister is a listing whose calls are guarded.
type guardedLister struct {
	l sftp.ListerAt
	h sftpHandlers
}

func (g guardedLister) ListAt(dst []os.FileInfo, off int64) (n int, err error) {
	defer contain(g.h.log, "sftp list", func() { n, err = 0, errInternal() })
	g.h.enter("ListAt")
	return g.l.ListAt(dst, off)
}
