// Copyright 2026 The Go Authors. All rights reserved.
// Use of this source code is governed by a BSD-style
// license that can be found in the LICENSE file.

package ssh

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"errors"
	"io"
	"testing"
	"testing/iotest"
)

// readCounter counts the reads of the connection under a transport.
type readCounter struct {
	r     io.Reader
	reads int
}

func (c *readCounter) Read(p []byte) (int, error) {
	c.reads++
	return c.r.Read(p)
}

// TestReadBufferBulkPackets: AES-GCM packets of bulk channel data that
// are all in the connection are read in one read of it, decrypted out of
// the read buffer, and the buffer goes back to the pool once they are.
// Through a 4 KiB bufio.Reader each took two reads.
func TestReadBufferBulkPackets(t *testing.T) {
	kr := &kexResult{Hash: crypto.SHA256}
	algs := DirectionAlgorithms{Cipher: CipherAES128GCM, compression: compressionNone}
	client, err := newPacketCipher(clientKeys, algs, kr)
	if err != nil {
		t.Fatal(err)
	}
	server, err := newPacketCipher(clientKeys, algs, kr)
	if err != nil {
		t.Fatal(err)
	}
	var conn bytes.Buffer
	const packets = 6
	for i := range packets {
		want := dataPacket(channelMaxPacket)
		want[9] = byte(i)
		if err := client.writeCipherPacket(uint32(i), &conn, rand.Reader, want); err != nil {
			t.Fatal(err)
		}
	}
	counter := &readCounter{r: &conn}
	s := connectionState{packetCipher: server}
	r := newReadBuffer(counter)
	for i := range packets {
		got, err := s.readPacket(r, false)
		if err != nil {
			t.Fatalf("packet %d: %v", i, err)
		}
		if len(got) != 9+channelMaxPacket || got[0] != msgChannelData || got[9] != byte(i) {
			t.Fatalf("packet %d did not read back", i)
		}
		recyclePacket(got)
	}
	if counter.reads != 1 {
		t.Errorf("%d packets took %d reads of the connection, want 1", packets, counter.reads)
	}
	if r.buf != nil {
		t.Error("the read buffer was kept once all of it was read")
	}
	if _, err := s.readPacket(r, false); err != io.EOF {
		t.Errorf("after the last packet: %v, want EOF", err)
	}
}

// TestReadBuffer: Read and Peek return the connection's bytes in order
// whatever the connection's reads return, and report its end as
// io.ReadFull would.
func TestReadBuffer(t *testing.T) {
	data := make([]byte, 3*readBufferSize/2)
	rand.Read(data)
	for name, conn := range map[string]func() io.Reader{
		"whole":    func() io.Reader { return bytes.NewReader(data) },
		"one byte": func() io.Reader { return iotest.OneByteReader(bytes.NewReader(data)) },
		"half":     func() io.Reader { return iotest.HalfReader(bytes.NewReader(data)) },
		"data+EOF": func() io.Reader { return iotest.DataErrReader(bytes.NewReader(data)) },
	} {
		t.Run(name, func(t *testing.T) {
			r := newReadBuffer(conn())
			var got []byte
			// Small reads, a peek of all the buffer holds across the
			// buffer's end, and reads larger than the buffer.
			for _, step := range []int{5, 100, readBufferSize, 7, readBufferSize + 1} {
				if step == readBufferSize {
					p, err := r.Peek(step)
					if err != nil {
						t.Fatalf("Peek(%d) at %d: %v", step, len(got), err)
					}
					got = append(got, p...)
					r.Discard(step)
					continue
				}
				p := make([]byte, step)
				n, err := io.ReadFull(r, p)
				if err != nil && !(err == io.ErrUnexpectedEOF && len(got)+n == len(data)) {
					t.Fatalf("ReadFull(%d) at %d: %v", step, len(got), err)
				}
				got = append(got, p[:n]...)
			}
			rest, err := io.ReadAll(r)
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, rest...)
			if !bytes.Equal(got, data) {
				t.Fatalf("read back %d bytes, not the %d written", len(got), len(data))
			}
			if r.buf != nil {
				t.Error("the read buffer was kept once all of it was read")
			}
		})
	}

	// The end: none of a packet is EOF, some of it ErrUnexpectedEOF, as
	// io.ReadFull says.
	r := newReadBuffer(bytes.NewReader([]byte("abc")))
	if p, err := r.Peek(4); err != io.ErrUnexpectedEOF || string(p) != "abc" {
		t.Errorf("Peek(4) of 3 bytes: %q, %v", p, err)
	}
	r.Discard(3)
	if _, err := r.Peek(4); err != io.EOF {
		t.Errorf("Peek at the end: %v, want EOF", err)
	}

	// A connection that returns nothing, for ever, is an error, not a
	// hang.
	r = newReadBuffer(nothingReader{})
	if _, err := r.Peek(10); !errors.Is(err, io.ErrNoProgress) {
		t.Errorf("Peek of a connection that returns nothing: %v", err)
	}
	if _, err := r.Read(make([]byte, 10)); !errors.Is(err, io.ErrNoProgress) {
		t.Errorf("Read of a connection that returns nothing: %v", err)
	}
}

type nothingReader struct{}

func (nothingReader) Read([]byte) (int, error) { return 0, nil }
