package sshserver

import (
	"bytes"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestParseIDNames(t *testing.T) {
	in := "# comment:x:7:\n" +
		"root:*:0:0:System Administrator:/var/root:/bin/sh\n" +
		"nobody:*:-2:-2:Unprivileged User:/var/empty:/usr/bin/false\n" +
		"\n" +
		"twice:*:0:0::/:/bin/sh\n" + // a second name for 0: the first wins
		"wheel:*:10:root\r\n" + // a group line, CRLF
		"short:*:11\n" + // no field after the id
		"bad id:*:12:\n" + // a space in the name
		"badid:*:x13:\n" +
		"big:*:4294967296:\n" + // over 32 bits
		"neg:*:-2147483649:\n" +
		"esc\x1b[31m:*:14:\n" + // a terminal escape in the name
		"\xff\xfe:*:15:\n" + // not UTF-8
		":*:16:\n" + // no name
		strings.Repeat("l", 65) + ":*:17:\n" +
		"max:*:4294967295:\n" +
		"last:*:18:" // no newline at the end
	got := parseIDNames([]byte(in))
	want := idNames{0: "root", 4294967294: "nobody", 10: "wheel", 11: "short", 4294967295: "max", 18: "last"}
	if len(got) != len(want) {
		t.Errorf("parsed %v, want %v", got, want)
	}
	for id, name := range want {
		if got[id] != name {
			t.Errorf("id %d: %q, want %q", id, got[id], name)
		}
	}
	for id, name := range map[string]string{"0": "root", "4294967294": "nobody", "12": "12", "x": "x", "99999999999": "99999999999"} {
		if n := got.name(id); n != name {
			t.Errorf("name(%q) = %q, want %q", id, n, name)
		}
	}
	if n := idNames(nil).name("0"); n != "0" {
		t.Errorf("no names: %q", n)
	}
}

// TestParseIDNamesHostile: a file a session wrote (one huge line, no
// newline, binary, a flood of entries) parses quickly into few names.
func TestParseIDNamesHostile(t *testing.T) {
	flood := &bytes.Buffer{}
	for i := 0; flood.Len() < maxIDFile-32; i++ {
		flood.WriteString("u:*:")
		flood.WriteString(strconv.Itoa(i))
		flood.WriteString(":\n")
	}
	random := make([]byte, maxIDFile)
	for i := range random {
		random[i] = byte(i*7919 + i>>8)
	}
	for name, b := range map[string][]byte{
		"one huge line":  bytes.Repeat([]byte("a"), maxIDFile),
		"huge, then ok":  append(bytes.Repeat([]byte(":"), maxIDFile-20), "\nok:*:5:\n"...),
		"only newlines":  bytes.Repeat([]byte("\n"), maxIDFile),
		"NULs":           make([]byte, maxIDFile),
		"binary":         random,
		"flood of names": flood.Bytes(),
	} {
		start := time.Now()
		got := parseIDNames(b)
		if len(got) > maxIDNames {
			t.Errorf("%s: %d names kept, limit %d", name, len(got), maxIDNames)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("%s: took %v", name, d)
		}
		for _, n := range got {
			if !validIDName([]byte(n)) {
				t.Errorf("%s: kept %q", name, n)
			}
		}
	}
}

// testRootFS is a rootFS on a fresh folder, as SFTP gets the prefix.
func testRootFS(t *testing.T, dir string) *rootFS {
	t.Helper()
	root, err := os.OpenFile(dir, unix.O_PATH|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { root.Close() })
	return &rootFS{root: root, log: slog.New(slog.NewTextHandler(io.Discard, nil))}
}

func writeFile(t *testing.T, p, s string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestPrefixNames reads the names as a macOS prefix has them
// (private/etc, with etc a symlink never followed) and as a Linux-like
// root does (etc), and falls back to numbers, without blocking, for what a
// session may have planted instead.
func TestPrefixNames(t *testing.T) {
	t.Run("macOS", func(t *testing.T) {
		d := t.TempDir()
		writeFile(t, d+"/private/etc/passwd", "root:*:0:0::/:/bin/sh\n")
		writeFile(t, d+"/private/etc/group", "wheel:*:0:root\n")
		os.Symlink("private/etc", d+"/etc")
		r := testRootFS(t, d)
		if u, g := r.LookupUserName("0"), r.LookupGroupName("0"); u != "root" || g != "wheel" {
			t.Errorf("got %s:%s, want root:wheel", u, g)
		}
	})
	t.Run("linux-like", func(t *testing.T) {
		d := t.TempDir()
		writeFile(t, d+"/etc/passwd", "root:x:0:0::/root:/bin/sh\nprefixuser:x:4242:4343::/:/bin/sh\n")
		writeFile(t, d+"/etc/group", "root:x:0:\nprefixgrp:x:4343:\n")
		r := testRootFS(t, d)
		if u, g := r.LookupUserName("4242"), r.LookupGroupName("4343"); u != "prefixuser" || g != "prefixgrp" {
			t.Errorf("got %s:%s, want prefixuser:prefixgrp", u, g)
		}
		if u := r.LookupUserName("4545"); u != "4545" {
			t.Errorf("unknown uid: %s", u)
		}
	})
	t.Run("planted", func(t *testing.T) {
		d := t.TempDir()
		outside := t.TempDir()
		writeFile(t, outside+"/passwd", "host:*:0:0::/:/bin/sh\n")
		writeFile(t, outside+"/group", "host:*:0:\n")
		os.MkdirAll(d+"/private/etc", 0o755)
		os.Symlink(outside+"/passwd", d+"/private/etc/passwd") // a symlink out
		unix.Mkfifo(d+"/private/etc/group", 0o644)             // would block a plain open
		os.Symlink(outside, d+"/etc")                          // a symlinked folder out
		r := testRootFS(t, d)
		done := make(chan [2]string, 1)
		go func() { done <- [2]string{r.LookupUserName("0"), r.LookupGroupName("0")} }()
		select {
		case got := <-done:
			if got != [2]string{"0", "0"} {
				t.Errorf("got %v, want numbers", got)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("blocked on a planted file")
		}
	})
	t.Run("oversized, then etc", func(t *testing.T) {
		d := t.TempDir()
		writeFile(t, d+"/private/etc/passwd", "root:*:0:0::/:/bin/sh\n"+strings.Repeat("#", maxIDFile))
		writeFile(t, d+"/etc/passwd", "toor:*:0:0::/:/bin/sh\n")
		r := testRootFS(t, d)
		if u := r.LookupUserName("0"); u != "toor" {
			t.Errorf("got %s, want the name from etc/passwd", u)
		}
	})
}
