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
// and above, whose arguments are not defined.
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
	case 1:
		return unix.VINTR, true
	case 2:
		return unix.VQUIT, true
	case 3:
		return unix.VERASE, true
	case 4:
		return unix.VKILL, true
	case 5:
		return unix.VEOF, true
	case 6:
		return unix.VEOL, true
	case 7:
		return unix.VEOL2, true
	case 8:
		return unix.VSTART, true
	case 9:
		return unix.VSTOP, true
	case 10:
		return unix.VSUSP, true
	case 12:
		return unix.VREPRINT, true
	case 13:
		return unix.VWERASE, true
	case 14:
		return unix.VLNEXT, true
	case 18:
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
		{30, &t.Iflag, unix.IGNPAR}, {31, &t.Iflag, unix.PARMRK}, {32, &t.Iflag, unix.INPCK},
		{33, &t.Iflag, unix.ISTRIP}, {34, &t.Iflag, unix.INLCR}, {35, &t.Iflag, unix.IGNCR},
		{36, &t.Iflag, unix.ICRNL}, {37, &t.Iflag, unix.IUCLC}, {38, &t.Iflag, unix.IXON},
		{39, &t.Iflag, unix.IXANY}, {40, &t.Iflag, unix.IXOFF}, {41, &t.Iflag, unix.IMAXBEL},
		{42, &t.Iflag, unix.IUTF8},
		{50, &t.Lflag, unix.ISIG}, {51, &t.Lflag, unix.ICANON}, {52, &t.Lflag, unix.XCASE},
		{53, &t.Lflag, unix.ECHO}, {54, &t.Lflag, unix.ECHOE}, {55, &t.Lflag, unix.ECHOK},
		{56, &t.Lflag, unix.ECHONL}, {57, &t.Lflag, unix.NOFLSH}, {58, &t.Lflag, unix.TOSTOP},
		{59, &t.Lflag, unix.IEXTEN}, {60, &t.Lflag, unix.ECHOCTL}, {61, &t.Lflag, unix.ECHOKE},
		{62, &t.Lflag, unix.PENDIN},
		{70, &t.Oflag, unix.OPOST}, {71, &t.Oflag, unix.OLCUC}, {72, &t.Oflag, unix.ONLCR},
		{73, &t.Oflag, unix.OCRNL}, {74, &t.Oflag, unix.ONOCR}, {75, &t.Oflag, unix.ONLRET},
		{92, &t.Cflag, unix.PARENB}, {93, &t.Cflag, unix.PARODD},
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
		case 90, 91: // CS7, CS8: a character size, not a flag
			if m.arg != 0 {
				size := uint32(unix.CS7)
				if m.op == 91 {
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
