package darlingexec

import (
	"bytes"
	"io"
	"log/slog"
	"strings"
	"testing"
	"testing/iotest"
)

func TestMarkerReader(t *testing.T) {
	const marker = "\x1edarling-sshd:abc\x1e"
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	big := strings.Repeat("junk ", 20000)
	for _, tc := range []struct{ name, in, want string }{
		{"no noise", marker + "payload", "payload"},
		{"noise", "Welcome to macOS\nlast login\n" + marker + "\x00\x01payload", "\x00\x01payload"},
		{"noise over many chunks", big + marker + big, big},
		{"marker twice", marker + "a" + marker, "a" + marker},
		{"empty output", marker, ""},
		{"no marker", "launcher failed before the command", ""},
	} {
		for _, wrap := range []struct {
			name string
			f    func(io.Reader) io.Reader
		}{{"whole", func(r io.Reader) io.Reader { return r }}, {"byte at a time", iotest.OneByteReader}} {
			m := &markerReader{r: wrap.f(strings.NewReader(tc.in)), marker: []byte(marker), log: quiet, bufs: &buffers{}}
			got, err := io.ReadAll(m)
			if err != nil || !bytes.Equal(got, []byte(tc.want)) {
				t.Errorf("%s (%s): got %d bytes %q (%v), want %d bytes", tc.name, wrap.name, len(got), truncate(got), err, len(tc.want))
			}
		}
	}
}

func truncate(b []byte) string {
	if len(b) > 60 {
		return string(b[:60]) + "…"
	}
	return string(b)
}
