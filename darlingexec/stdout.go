package darlingexec

import (
	"bytes"
	"io"
	"log/slog"
)

// markerReader drops what comes on a command's stdout before the marker
// the script prints just before it execs the command: Darling's login
// shell sources /etc/profile and ~/.bash_profile, and one stray byte of
// theirs on stdout breaks Nix's protocol ("protocol mismatch").
type markerReader struct {
	r       io.Reader
	marker  []byte
	found   bool
	window  []byte // bytes read while searching: a possible marker prefix
	pending []byte // bytes after the marker, not yet returned
	dropped int
	log     *slog.Logger
	bufs    *buffers // lends search its buffer
}

func (m *markerReader) Read(p []byte) (int, error) {
	if !m.found {
		if err := m.search(); err != nil {
			return 0, err
		}
	}
	if len(m.pending) > 0 {
		n := copy(p, m.pending)
		m.pending = m.pending[n:]
		return n, nil
	}
	return m.r.Read(p)
}

// search reads until the marker has passed, keeping at most a quiet
// buffer and a marker's length in memory.
func (m *markerReader) search() error {
	b := m.bufs.get(false)
	defer m.bufs.put(b)
	buf := *b
	for {
		n, err := m.r.Read(buf)
		m.window = append(m.window, buf[:n]...)
		if i := bytes.Index(m.window, m.marker); i >= 0 {
			m.found = true
			m.dropped += i
			m.pending = m.window[i+len(m.marker):]
			m.window = nil
			if m.dropped > 0 {
				m.log.Debug("dropped startup output before the command's stdout", "bytes", m.dropped)
			}
			return nil
		}
		if keep := len(m.marker) - 1; len(m.window) > keep {
			m.dropped += len(m.window) - keep
			m.window = append(m.window[:0:0], m.window[len(m.window)-keep:]...)
		}
		if err != nil {
			if err == io.EOF && m.dropped+len(m.window) > 0 {
				m.log.Warn("command never started: its stdout ended before the start marker; dropped what came",
					"bytes", m.dropped+len(m.window))
			}
			return err
		}
	}
}
