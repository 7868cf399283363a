// Copyright 2026 The Go Authors. All rights reserved.
// Use of this source code is governed by a BSD-style
// license that can be found in the LICENSE file.

package ssh

import "sync"

// Every packet read is copied out of the cipher's buffer into a new slice.
// For bulk channel data that is as many bytes of garbage as bytes received,
// and on a fast link the collector, and the memory it frees and the process
// faults back in, cost more CPU than decrypting. So packets the size of bulk
// channel data are copied into buffers from packetPool instead, and a
// channel's buffer hands them back once the application has read the data.
// A packet that is never handed back is ordinary garbage.

const (
	// pooledPacketSize holds the largest channel data packet this side
	// accepts: the extended data header and channelMaxPacket bytes.
	pooledPacketSize = 13 + channelMaxPacket
	// pooledPacketMin keeps small packets out of the pool, so that data
	// buffered in a channel never holds more than twice its size.
	pooledPacketMin = pooledPacketSize / 2
)

var packetPool = sync.Pool{
	New: func() any { return new([pooledPacketSize]byte) },
}

// newPacket returns a slice of length n for a packet, from packetPool if n
// is the size of bulk channel data.
func newPacket(n int) []byte {
	if n < pooledPacketMin || n > pooledPacketSize {
		return make([]byte, n)
	}
	return packetPool.Get().(*[pooledPacketSize]byte)[:n]
}

// recyclePacket puts packet, which came from newPacket and which nothing
// refers to any more, back in packetPool if it came from there.
func recyclePacket(packet []byte) {
	if cap(packet) != pooledPacketSize {
		return
	}
	packetPool.Put((*[pooledPacketSize]byte)(packet[:pooledPacketSize]))
}
