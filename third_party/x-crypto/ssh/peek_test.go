// Copyright 2026 The Go Authors. All rights reserved.
// Use of this source code is governed by a BSD-style
// license that can be found in the LICENSE file.

package ssh

import (
	"bytes"
	"io"
	"testing"
	"time"
)

// TestBufferPeekDiscard: peek lends the buffered data in order, up to max
// bytes and peekMaxBufs slices, without consuming it; discard consumes it
// across packets, recycling a packet only once all of it is consumed;
// peek returns io.EOF once the buffer is closed and empty.
func TestBufferPeekDiscard(t *testing.T) {
	b := newBuffer()
	var want []byte
	template := dataPacket(channelMaxPacket)
	for i := 0; i < 3; i++ {
		packet := newPacket(template)
		data := packet[9:]
		for j := range data {
			data[j] = byte(i*7 + j)
		}
		want = append(want, data...)
		b.write(data, packet)
	}
	for i := 0; i < 2*peekMaxBufs; i++ {
		b.write([]byte{byte(i)}, nil)
		want = append(want, byte(i))
	}

	bufs, err := b.peek(nil, channelMaxPacket+10)
	if err != nil || len(bufs) != 2 || len(bufs[0]) != channelMaxPacket || len(bufs[1]) != 10 {
		t.Fatalf("peek(max %d) = %d slices, %v", channelMaxPacket+10, len(bufs), err)
	}
	if got := bytes.Join(bufs, nil); !bytes.Equal(got, want[:channelMaxPacket+10]) {
		t.Fatal("peek lends other bytes than were written")
	}
	// Peeking again lends the same bytes: nothing was consumed.
	again, _ := b.peek(nil, channelMaxPacket+10)
	if !bytes.Equal(bytes.Join(again, nil), want[:channelMaxPacket+10]) {
		t.Fatal("peek consumed data")
	}

	// Discard part of the second packet: the first goes back to the
	// pool, the second stays until all of it is consumed.
	b.discard(channelMaxPacket + 10)
	want = want[channelMaxPacket+10:]
	if b.head.packet == nil || len(b.head.buf) != channelMaxPacket-10 {
		t.Fatalf("after discarding into the second packet: head holds %d bytes, packet %v", len(b.head.buf), b.head.packet != nil)
	}

	var got []byte
	for {
		bufs, err := b.peek(bufs[:0], 1<<20)
		if err != nil {
			t.Fatal(err)
		}
		if len(bufs) > peekMaxBufs {
			t.Fatalf("peek lent %d slices, more than %d", len(bufs), peekMaxBufs)
		}
		n := 0
		for _, p := range bufs {
			got = append(got, p...)
			n += len(p)
		}
		b.discard(n)
		if len(got) == len(want) {
			break
		}
	}
	if !bytes.Equal(got, want) {
		t.Fatal("peek and discard lost or reordered data")
	}
	if got := b.discard(10); got != 0 {
		t.Fatalf("discard on an empty buffer consumed %d", got)
	}
	if bufs, err := b.peek(nil, 0); err != nil || len(bufs) != 0 {
		t.Fatalf("peek(max 0) = %d slices, %v", len(bufs), err)
	}
	b.eof()
	if bufs, err := b.peek(nil, 1<<20); err != io.EOF || len(bufs) != 0 {
		t.Fatalf("peek at the end = %d slices, %v; want io.EOF", len(bufs), err)
	}
}

// TestBufferPeekWaits: peek on an empty buffer waits for a write.
func TestBufferPeekWaits(t *testing.T) {
	b := newBuffer()
	done := make(chan []byte)
	go func() {
		bufs, err := b.peek(nil, 100)
		if err != nil {
			t.Error(err)
		}
		done <- bytes.Join(bufs, nil)
	}()
	select {
	case got := <-done:
		t.Fatalf("peek on an empty buffer returned %q", got)
	case <-time.After(20 * time.Millisecond):
	}
	b.write([]byte("hello"), nil)
	if got := <-done; string(got) != "hello" {
		t.Fatalf("peek after the write = %q", got)
	}
}

// TestChannelPeekData: a channel read through PeekData and DiscardData
// gets all the data in order, and DiscardData adjusts the window: more
// than a window's worth gets through.
func TestChannelPeekData(t *testing.T) {
	writer, reader, mux := channelPair(t)
	defer writer.Close()
	defer reader.Close()
	defer mux.Close()

	want := make([]byte, 2*channelWindowSize+12345)
	for i := range want {
		want[i] = byte(i % 251)
	}
	go func() {
		if _, err := writer.Write(want); err != nil {
			t.Error(err)
		}
		writer.CloseWrite()
	}()
	var got []byte
	var bufs [][]byte
	for {
		var err error
		bufs, err = reader.PeekData(bufs[:0], 100000)
		n := 0
		for _, p := range bufs {
			got = append(got, p...)
			n += len(p)
		}
		if derr := reader.DiscardData(n); derr != nil {
			t.Fatal(derr)
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("got %d bytes, want %d, or other bytes", len(got), len(want))
	}
	if err := reader.DiscardData(10); err == nil {
		t.Fatal("DiscardData of more than is buffered: no error")
	}
}
