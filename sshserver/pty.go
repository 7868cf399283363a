package sshserver

import (
	"encoding/binary"
	"errors"

	gossh "golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"

	"github.com/darling-sshd/darling-sshd/darlingexec"
)

// ptyRequest is a parsed "pty-req" (RFC 4254 section 6.2).
type ptyRequest struct {
	Term       string
	Cols, Rows uint32
	Width      uint32
	Height     uint32
	Modes      string
}

// windowChange is a parsed "window-change" (RFC 4254 section 6.7).
type windowChange struct {
	Cols, Rows    uint32
	Width, Height uint32
}

// clampSize keeps a terminal size within what the kernel's winsize holds.
func clampSize(n uint32) uint16 {
	if n > 0xffff {
		return 0xffff
	}
	return uint16(n)
}

// parsePtyReq checks a pty-req: a sane TERM and well-formed modes.
func parsePtyReq(payload []byte) (*ptyRequest, error) {
	var r ptyRequest
	if err := gossh.Unmarshal(payload, &r); err != nil {
		return nil, err
	}
	if len(r.Term) > 256 || !validTerm(r.Term) {
		return nil, errors.New("bad TERM")
	}
	if _, err := parseModes([]byte(r.Modes)); err != nil {
		return nil, err
	}
	return &r, nil
}

func validTerm(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c <= ' ' || c >= 0x7f {
			return false
		}
	}
	return true
}

// pty turns the request into what darlingexec needs.
func (r *ptyRequest) pty() *darlingexec.PTY {
	modes, _ := parseModes([]byte(r.Modes))
	return &darlingexec.PTY{
		Term:  r.Term,
		Cols:  clampSize(r.Cols),
		Rows:  clampSize(r.Rows),
		Modes: func(t *unix.Termios) { applyModes(t, modes) },
	}
}

type mode struct {
	op  byte
	arg uint32
}

// parseModes decodes encoded terminal modes (RFC 4254 section 8): opcode
// and uint32 argument pairs, ended by TTY_OP_END (0) or an opcode of 160
// and above, whose arguments are not defined (x/crypto does not export
// either bound).
func parseModes(b []byte) ([]mode, error) {
	var modes []mode
	for len(b) > 0 {
		op := b[0]
		if op == 0 || op >= 160 {
			return modes, nil
		}
		if len(b) < 5 {
			return nil, errors.New("truncated terminal modes")
		}
		modes = append(modes, mode{op, binary.BigEndian.Uint32(b[1:5])})
		b = b[5:]
	}
	return modes, nil
}

// ccIndex maps a control-character opcode (RFC 4254 section 8) to its
// index in a Linux termios's Cc.
func ccIndex(op byte) (int, bool) {
	switch op {
	case gossh.VINTR:
		return unix.VINTR, true
	case gossh.VQUIT:
		return unix.VQUIT, true
	case gossh.VERASE:
		return unix.VERASE, true
	case gossh.VKILL:
		return unix.VKILL, true
	case gossh.VEOF:
		return unix.VEOF, true
	case gossh.VEOL:
		return unix.VEOL, true
	case gossh.VEOL2:
		return unix.VEOL2, true
	case gossh.VSTART:
		return unix.VSTART, true
	case gossh.VSTOP:
		return unix.VSTOP, true
	case gossh.VSUSP:
		return unix.VSUSP, true
	case gossh.VREPRINT:
		return unix.VREPRINT, true
	case gossh.VWERASE:
		return unix.VWERASE, true
	case gossh.VLNEXT:
		return unix.VLNEXT, true
	case gossh.VDISCARD:
		return unix.VDISCARD, true
	}
	return 0, false
}

// flagBit maps a flag opcode (RFC 4254 section 8) to the termios flag
// word it lives in and its bit there.
func flagBit(t *unix.Termios, op byte) (*uint32, uint32) {
	bits := [...]struct {
		op   byte
		word *uint32
		bit  uint32
	}{
		{gossh.IGNPAR, &t.Iflag, unix.IGNPAR}, {gossh.PARMRK, &t.Iflag, unix.PARMRK},
		{gossh.INPCK, &t.Iflag, unix.INPCK}, {gossh.ISTRIP, &t.Iflag, unix.ISTRIP},
		{gossh.INLCR, &t.Iflag, unix.INLCR}, {gossh.IGNCR, &t.Iflag, unix.IGNCR},
		{gossh.ICRNL, &t.Iflag, unix.ICRNL}, {gossh.IUCLC, &t.Iflag, unix.IUCLC},
		{gossh.IXON, &t.Iflag, unix.IXON}, {gossh.IXANY, &t.Iflag, unix.IXANY},
		{gossh.IXOFF, &t.Iflag, unix.IXOFF}, {gossh.IMAXBEL, &t.Iflag, unix.IMAXBEL},
		{gossh.IUTF8, &t.Iflag, unix.IUTF8},
		{gossh.ISIG, &t.Lflag, unix.ISIG}, {gossh.ICANON, &t.Lflag, unix.ICANON},
		{gossh.XCASE, &t.Lflag, unix.XCASE}, {gossh.ECHO, &t.Lflag, unix.ECHO},
		{gossh.ECHOE, &t.Lflag, unix.ECHOE}, {gossh.ECHOK, &t.Lflag, unix.ECHOK},
		{gossh.ECHONL, &t.Lflag, unix.ECHONL}, {gossh.NOFLSH, &t.Lflag, unix.NOFLSH},
		{gossh.TOSTOP, &t.Lflag, unix.TOSTOP}, {gossh.IEXTEN, &t.Lflag, unix.IEXTEN},
		{gossh.ECHOCTL, &t.Lflag, unix.ECHOCTL}, {gossh.ECHOKE, &t.Lflag, unix.ECHOKE},
		{gossh.PENDIN, &t.Lflag, unix.PENDIN},
		{gossh.OPOST, &t.Oflag, unix.OPOST}, {gossh.OLCUC, &t.Oflag, unix.OLCUC},
		{gossh.ONLCR, &t.Oflag, unix.ONLCR}, {gossh.OCRNL, &t.Oflag, unix.OCRNL},
		{gossh.ONOCR, &t.Oflag, unix.ONOCR}, {gossh.ONLRET, &t.Oflag, unix.ONLRET},
		{gossh.PARENB, &t.Cflag, unix.PARENB}, {gossh.PARODD, &t.Cflag, unix.PARODD},
	}
	for _, b := range bits {
		if b.op == op {
			return b.word, b.bit
		}
	}
	return nil, 0
}

// applyModes sets the client's terminal modes on t. Unknown opcodes and
// speeds are ignored, as sshd ignores them.
func applyModes(t *unix.Termios, modes []mode) {
	for _, m := range modes {
		if i, ok := ccIndex(m.op); ok {
			t.Cc[i] = byte(m.arg)
			continue
		}
		switch m.op {
		case gossh.CS7, gossh.CS8: // a character size, not a flag
			if m.arg != 0 {
				size := uint32(unix.CS7)
				if m.op == gossh.CS8 {
					size = unix.CS8
				}
				t.Cflag = t.Cflag&^unix.CSIZE | size
			}
			continue
		}
		if word, bit := flagBit(t, m.op); word != nil {
			if m.arg != 0 {
				*word |= bit
			} else {
				*word &^= bit
			}
		}
	}
}
