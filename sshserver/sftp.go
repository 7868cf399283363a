package sshserver

import (
	"errors"
	"io"
	"os"
	"os/user"
	"strconv"

	"github.com/pkg/sftp"
	gossh "golang.org/x/crypto/ssh"
)

// homeDir is the SFTP start folder: Darling runs the prefix as the
// server's own uid, whose home in the prefix is /Users/<name>.
func homeDir() string {
	if u, err := user.Current(); err == nil && u.Username != "" {
		return "/Users/" + u.Username
	}
	return "/Users/" + strconv.Itoa(os.Getuid())
}

// startSFTP serves the "sftp" subsystem in-process, rooted at the prefix
// as the prefix's own processes see it. Opening the prefix may wait for a
// warm-up, so a task does it; if the prefix cannot be opened, the request
// fails with the reason on stderr.
func (se *session) startSFTP(req *gossh.Request) {
	se.enter(starting)
	se.sftp = true
	if !se.register() {
		reply(req, false)
		se.finish("server is shutting down", nil)
		return
	}
	se.spawn(func() func() {
		root, err := se.s.launcher.PrefixRoot(se.s.ctx)
		if err != nil {
			se.log.Error("sftp not started", "err", err)
			_, _ = se.ch.Stderr().Write([]byte("darling-sshd: sftp: " + err.Error() + "\n"))
			return func() {
				reply(req, false)
				se.sendExitStatus(255)
				se.closeChannel()
				se.enter(closed)
			}
		}
		return func() { se.serveSFTP(req, root) }
	})
}

// serveSFTP accepts the request and serves SFTP on the channel in a
// goroutine of its own until the client ends it.
func (se *session) serveSFTP(req *gossh.Request, root *os.File) {
	if se.peerGone || se.serverEnded {
		root.Close()
		reply(req, false)
		se.enter(closed)
		return
	}
	// A panic on pkg/sftp's sending goroutine ends the connection.
	var hook func(string) // tests' panics; nil otherwise, so that reads and writes pay nothing
	if se.s.hook.Load() != nil {
		hook = func(where string) { se.s.at(where, se.c.remote) }
	}
	wire, err := newSFTPWire(se.ch, se.log, func() { se.sc.Close() }, hook)
	if err != nil {
		root.Close()
		se.log.Error("sftp not started", "err", err)
		reply(req, false)
		se.sendExitStatus(255)
		se.closeChannel()
		se.enter(closed)
		return
	}
	reply(req, true)
	se.enter(running)
	se.log.Info("sftp started")
	fsys := &rootFS{root: root, log: se.log, files: wire.files}
	rs := sftp.NewRequestServer(wire, sftpHandlers{fs: fsys, log: se.log, hook: hook}.handlers(),
		sftp.WithStartDirectory(se.s.home))
	done := make(chan struct{})
	se.sftpDone = done
	se.goSafe(func() {
		defer close(done)
		defer root.Close()
		se.sftpErr = rs.Serve()
	})
}

// sftpEnded sends the exit frames once the SFTP server has returned.
func (se *session) sftpEnded() {
	se.enter(closing)
	err := se.sftpErr
	switch {
	case se.serverEnded:
		se.enter(closed) // finish sent the frames, or is sending them
	case se.peerGone:
		se.log.Info("sftp ended: client went away")
		se.enter(closed)
	case err != nil && !errors.Is(err, io.EOF):
		se.log.Info("sftp ended", "err", err)
		se.finish("sftp: "+err.Error(), nil)
	default:
		se.log.Info("sftp ended")
		se.sendExitStatus(0)
		se.closeChannel()
		se.enter(closed)
	}
}
