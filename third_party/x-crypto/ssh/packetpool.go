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

// newPacket returns a slice as long as packet to copy it into, from
// packetPool if packet is bulk channel data. Only channel data is pooled:
// it never leaves this package but as PeekData lends it, until
// DiscardData (channel reads copy it out), whereas other
// messages are unmarshaled into []byte fields that reach the application,
// and a pooled buffer's capacity would show it another packet's bytes.
func newPacket(packet []byte) []byte {
	n := len(packet)
	if n < pooledPacketMin || n > pooledPacketSize ||
		(packet[0] != msgChannelData && packet[0] != msgChannelExtendedData) {
		return make([]byte, n)
	}
	return packetPool.Get().(*[pooledPacketSize]byte)[:n]
}

// recyclePacket puts packet, channel data from newPacket which nothing
// refers to any more, back in packetPool if it came from there.
func recyclePacket(packet []byte) {
	if cap(packet) != pooledPacketSize {
		return
	}
	packetPool.Put((*[pooledPacketSize]byte)(packet[:pooledPacketSize]))
}
