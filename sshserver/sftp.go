package sshserver

import (
	"errors"
	"io"
	"os"
	"os/user"
	"strconv"
	"sync/atomic"

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
// as the prefix's own processes see it. If the prefix cannot be opened
// (its container cannot be warmed), the request fails with the reason on
// stderr.
func (se *session) startSFTP(req *gossh.Request) {
	root, err := se.s.launcher.PrefixRoot(se.s.ctx)
	if err != nil {
		se.log.Error("sftp not started", "err", err)
		se.ch.Stderr().Write([]byte("darling-sshd: sftp: " + err.Error() + "\n"))
		if req.WantReply {
			_ = req.Reply(false, nil)
		}
		return
	}
	se.started = true
	if req.WantReply {
		_ = req.Reply(true, nil)
	}
	se.launch(func() { se.serveSFTP(root) }, func() { root.Close() })
}

// serveSFTP serves SFTP on the channel until the client ends it.
func (se *session) serveSFTP(root *os.File) {
	se.log.Info("sftp started")
	fsys := &rootFS{root: root, log: se.log}
	rs := sftp.NewRequestServer(channelOnly{se.ch},
		sftp.Handlers{FileGet: fsys, FilePut: fsys, FileCmd: fsys, FileList: fsys},
		sftp.WithStartDirectory(se.s.home))
	var ended atomic.Bool
	done := make(chan struct{})
	go func() {
		select {
		case <-se.s.ctx.Done():
			// The server ends the session: status 255, then the
			// channel's close ends Serve.
			ended.Store(true)
			se.finishWithError("server is shutting down")
		case <-done:
		}
	}()
	err := rs.Serve()
	close(done)
	if ended.Load() {
		return
	}
	select {
	case <-se.gone:
		se.log.Info("sftp ended: client went away")
		return
	default:
	}
	if err != nil && !errors.Is(err, io.EOF) {
		se.log.Info("sftp ended", "err", err)
		se.finishWithError("sftp: " + err.Error())
		return
	}
	se.log.Info("sftp ended")
	se.sendExitStatus(0)
	se.closeChannel()
}

// channelOnly hides the channel's Close from pkg/sftp's RequestServer,
// which closes the channel itself when it is done: the exit status must
// still go out first, or scp and sftp exit 255.
type channelOnly struct{ ch gossh.Channel }

func (c channelOnly) Read(p []byte) (int, error)  { return c.ch.Read(p) }
func (c channelOnly) Write(p []byte) (int, error) { return c.ch.Write(p) }
func (c channelOnly) Close() error                { return nil }
