package sshserver

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

// TestRawReader: a rawReader on a TCP connection reads what the peer
// sent, byte-exact, then io.EOF when the peer closes; a read deadline and
// a Close of the connection end a waiting read as the connection's own
// Read does.
func TestRawReader(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	pair := func() (ours, peer net.Conn) {
		t.Helper()
		peer, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		ours, err = l.Accept()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ours.Close(); peer.Close() })
		return ours, peer
	}

	ours, peer := pair()
	r := newRawReader(ours)
	if _, ok := r.(*rawReader); !ok {
		t.Fatalf("newRawReader(TCP) = %T, want rawReader", r)
	}
	want := make([]byte, 3<<20)
	for i := range want {
		want[i] = byte(i * 7)
	}
	go func() {
		peer.Write(want)
		peer.Close()
	}()
	got, err := io.ReadAll(r)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("read %d bytes, %v; want %d bytes, nil", len(got), err, len(want))
	}

	ours, _ = pair()
	r = newRawReader(ours)
	ours.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if _, err := r.Read(make([]byte, 10)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read past the deadline: %v", err)
	}

	ours, _ = pair()
	r = newRawReader(ours)
	done := make(chan error)
	go func() {
		_, err := r.Read(make([]byte, 10))
		done <- err
	}()
	ours.Close()
	if err := <-done; !errors.Is(err, net.ErrClosed) {
		t.Fatalf("read on a closed connection: %v", err)
	}
}
