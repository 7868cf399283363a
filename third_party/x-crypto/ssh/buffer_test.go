// Copyright 2011 The Go Authors. All rights reserved.
// Use of this source code is governed by a BSD-style
// license that can be found in the LICENSE file.

package ssh

import (
	"io"
	"runtime"
	"testing"
)

var alphabet = []byte("abcdefghijklmnopqrstuvwxyz")

func TestBufferReadwrite(t *testing.T) {
	b := newBuffer()
	b.write(alphabet[:10], nil)
	r, _ := b.Read(make([]byte, 10))
	if r != 10 {
		t.Fatalf("Expected written == read == 10, written: 10, read %d", r)
	}

	b = newBuffer()
	b.write(alphabet[:5], nil)
	r, _ = b.Read(make([]byte, 10))
	if r != 5 {
		t.Fatalf("Expected written == read == 5, written: 5, read %d", r)
	}

	b = newBuffer()
	b.write(alphabet[:10], nil)
	r, _ = b.Read(make([]byte, 5))
	if r != 5 {
		t.Fatalf("Expected written == 10, read == 5, written: 10, read %d", r)
	}

	b = newBuffer()
	b.write(alphabet[:5], nil)
	b.write(alphabet[5:15], nil)
	r, _ = b.Read(make([]byte, 10))
	r2, _ := b.Read(make([]byte, 10))
	if r != 10 || r2 != 5 || r+r2 != 15 {
		t.Fatal("Expected written == read == 15")
	}
}

func TestBufferClose(t *testing.T) {
	b := newBuffer()
	b.write(alphabet[:10], nil)
	b.eof()
	_, err := b.Read(make([]byte, 5))
	if err != nil {
		t.Fatal("expected read of 5 to not return EOF")
	}
	b = newBuffer()
	b.write(alphabet[:10], nil)
	b.eof()
	r, err := b.Read(make([]byte, 5))
	r2, err2 := b.Read(make([]byte, 10))
	if r != 5 || r2 != 5 || err != nil || err2 != nil {
		t.Fatal("expected reads of 5 and 5")
	}

	b = newBuffer()
	b.write(alphabet[:10], nil)
	b.eof()
	r, err = b.Read(make([]byte, 5))
	r2, err2 = b.Read(make([]byte, 10))
	r3, err3 := b.Read(make([]byte, 10))
	if r != 5 || r2 != 5 || r3 != 0 || err != nil || err2 != nil || err3 != io.EOF {
		t.Fatal("expected reads of 5 and 5 and 0, with EOF")
	}

	b = newBuffer()
	b.write(make([]byte, 5), nil)
	b.write(make([]byte, 10), nil)
	b.eof()
	r, err = b.Read(make([]byte, 9))
	r2, err2 = b.Read(make([]byte, 3))
	r3, err3 = b.Read(make([]byte, 3))
	r4, err4 := b.Read(make([]byte, 10))
	if err != nil || err2 != nil || err3 != nil || err4 != io.EOF {
		t.Fatalf("Expected EOF on forth read only, err=%v, err2=%v, err3=%v, err4=%v", err, err2, err3, err4)
	}
	if r != 9 || r2 != 3 || r3 != 3 || r4 != 0 {
		t.Fatal("Expected written == read == 15", r, r2, r3, r4)
	}
}

func TestBufferRecyclesPackets(t *testing.T) {
	b := newBuffer()
	out := make([]byte, channelMaxPacket)
	const runs = 100
	template := dataPacket(channelMaxPacket)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for i := 0; i < runs; i++ {
		packet := newPacket(template)
		data := packet[9:]
		for j := range data {
			data[j] = byte(i)
		}
		b.write(data, packet)
		// Read it in two parts: the packet must not go back to the
		// pool before the last part is read.
		n, err := b.Read(out[:100])
		if err != nil || n != 100 {
			t.Fatalf("Read = %d, %v", n, err)
		}
		if b.head.packet == nil {
			t.Fatal("packet recycled before all of it was read")
		}
		n, err = b.Read(out[100:])
		if err != nil || n != len(data)-100 {
			t.Fatalf("Read = %d, %v", n, err)
		}
		if b.head.packet != nil {
			t.Fatal("packet not recycled once read")
		}
		for j, c := range out {
			if c != byte(i) {
				t.Fatalf("run %d: byte %d is %d", i, j, c)
			}
		}
	}
	runtime.ReadMemStats(&after)
	// Without recycling every run allocates a packet.
	if perRun := (after.TotalAlloc - before.TotalAlloc) / runs; perRun > pooledPacketSize/2 {
		t.Errorf("%d bytes allocated per packet read, want < %d", perRun, pooledPacketSize/2)
	}
}

// dataPacket returns a channel data packet carrying n bytes.
func dataPacket(n int) []byte {
	p := make([]byte, 9+n)
	p[0] = msgChannelData
	return p
}

func TestNewPacketPoolsOnlyBulkData(t *testing.T) {
	if p := newPacket(dataPacket(channelMaxPacket)); cap(p) != pooledPacketSize {
		t.Errorf("a %d-byte data packet did not come from the pool", len(p))
	}
	if p := newPacket(dataPacket(100)); cap(p) != len(p) {
		t.Error("a 100-byte data packet came from the pool")
	}
	// Other messages are unmarshaled into []byte fields the application
	// gets; a pooled buffer's capacity would show it stale bytes.
	req := make([]byte, 20000)
	req[0] = msgChannelRequest
	if p := newPacket(req); cap(p) != len(p) {
		t.Error("a 20000-byte channel request came from the pool")
	}
	if p := newPacket(dataPacket(pooledPacketSize)); len(p) != 9+pooledPacketSize || cap(p) != len(p) {
		t.Errorf("an oversized data packet: length %d, capacity %d", len(p), cap(p))
	}
}
