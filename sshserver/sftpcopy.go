package sshserver

import (
	"errors"
	"fmt"
	"io"
	"math"
	"syscall"

	"github.com/pkg/sftp"
)

// copyData is a copy-data request (OpenSSH's extension, which its sftp
// uses for cp) as the wire read it: the files its handles named when it
// came, in order with the client's other requests.
type copyData struct {
	bad                        bool // too short to read
	from, to                   *sftpFile
	sameHandle                 bool
	readOff, readLen, writeOff uint64
	// An append target's turn (appendOrder), taken when it came.
	seq      uint64
	numbered bool
}

// copyChunk is the size OpenSSH's sftp-server copies in.
const copyChunk = 64 << 10

// copyData copies between two open files inside the prefix, server-side,
// as OpenSSH's sftp-server does (process_extended_copy_data), with the
// same statuses: read length 0 copies to the end of the file; a handle
// that is not an open file, the same handle or the same file name twice
// fail; reads and writes go in 64 KiB pieces, each read whole unless the
// file ends; a piece that reads nothing ends the copy with EOF (OK when
// copying to the end); a write target opened to append gets the data at
// its end. Both handles were opened through the root, so nothing outside
// the prefix's view is reached.
func (r *rootFS) copyData(c *copyData) error {
	if c.bad {
		return fmt.Errorf("copy-data: request too short: %w", sftp.ErrSSHFxBadMessage)
	}
	if c.numbered {
		defer c.to.app.done()
		if !c.to.app.wait(c.seq) {
			return fmt.Errorf("copy-data: the target is closed: %w", sftp.ErrSSHFxFailure)
		}
	}
	if c.sameHandle || c.from == nil || c.to == nil || c.from.Name() == c.to.Name() {
		return fmt.Errorf("copy-data: needs two handles of two open files: %w", sftp.ErrSSHFxFailure)
	}
	readLen, untilEOF := c.readLen, c.readLen == 0
	if untilEOF {
		readLen = math.MaxUint64 - c.readOff
	}
	if c.readOff > math.MaxInt64 || (c.to.app == nil && c.writeOff > math.MaxInt64) {
		return fmt.Errorf("copy-data: offset out of range: %w", sftp.ErrSSHFxBadMessage)
	}
	roff, woff := int64(c.readOff), int64(c.writeOff)
	buf := make([]byte, min(copyChunk, readLen))
	for readLen > 0 || untilEOF {
		n := min(uint64(len(buf)), readLen)
		readLen -= n
		got, err := c.from.ReadAt(buf[:n], roff)
		switch {
		case err != nil && !errors.Is(err, io.EOF):
			// A failed read loses the piece, as OpenSSH's atomicio does.
			return portable("read "+c.from.Name(), err)
		case got == 0 && untilEOF:
			return nil
		case got == 0:
			if readLen == 0 {
				return nil // OpenSSH's sftp-server: the length was used up
			}
			return fmt.Errorf("copy-data: %s ends at %d: %w", c.from.Name(), roff, sftp.ErrSSHFxEOF)
		}
		roff += int64(got)
		var werr error
		if c.to.app != nil {
			_, werr = c.to.File.Write(buf[:got])
		} else {
			_, werr = c.to.File.WriteAt(buf[:got], woff)
		}
		if werr != nil {
			return portable("write "+c.to.Name(), werr)
		}
		woff += int64(got)
	}
	return nil
}

// portable gives err the status OpenSSH's sftp-server answers its errno
// with (errno_to_portable).
func portable(op string, err error) error {
	code := sftp.ErrSSHFxFailure
	var errno syscall.Errno
	if errors.As(err, &errno) {
		switch errno {
		case syscall.ENOENT, syscall.ENOTDIR, syscall.EBADF, syscall.ELOOP:
			code = sftp.ErrSSHFxNoSuchFile
		case syscall.EPERM, syscall.EACCES, syscall.EFAULT:
			code = sftp.ErrSSHFxPermissionDenied
		case syscall.ENAMETOOLONG, syscall.EINVAL:
			code = sftp.ErrSSHFxBadMessage
		case syscall.ENOSYS:
			code = sftp.ErrSSHFxOpUnsupported
		}
	}
	return fmt.Errorf("copy-data: %s: %v: %w", op, err, code)
}
