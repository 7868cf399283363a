// Copyright 2026 The Go Authors. All rights reserved.
// Use of this source code is governed by a BSD-style
// license that can be found in the LICENSE file.

package ssh

import (
	"errors"
	"io"
	"sync"
)

// The transport used to read through a 4 KiB bufio.Reader: a bulk packet
// (32 KiB of channel data, OpenSSH's size) took a read(2) to fill the
// buffer and another to read the rest past it, and was then copied once
// more, out of the cipher's buffer into a fresh one. readBuffer reads as
// much as the connection holds, up to readBufferSize, in one read(2), and
// AEAD ciphers decrypt straight out of it (see Peek). Its buffer comes
// from a pool and goes back there whenever all it read has been
// consumed, so an idle connection holds none.

// readBufferSize holds the largest packet this side accepts whole: its
// length, maxPacket bytes and the largest MAC.
const readBufferSize = 4 + maxPacket + 64

var readBufferPool = sync.Pool{
	New: func() any { return new([readBufferSize]byte) },
}

// readBuffer is a buffered reader for one goroutine, like bufio.Reader,
// whose buffer is pooled while empty, and which can Peek as far as a
// whole packet.
type readBuffer struct {
	r          io.Reader
	buf        *[readBufferSize]byte // nil while empty
	head, tail int                   // buf[head:tail] is unread
	err        error                 // from r, returned once buf is empty
}

func newReadBuffer(r io.Reader) *readBuffer { return &readBuffer{r: r} }

// Read reads into p what is buffered or, with nothing buffered, what one
// read of the connection brings.
func (b *readBuffer) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if b.head == b.tail {
		if b.err != nil {
			return 0, b.readErr()
		}
		if len(p) >= readBufferSize {
			// As bufio: large reads go straight to p.
			return b.r.Read(p)
		}
		b.fill()
		if b.head == b.tail {
			return 0, b.readErr()
		}
	}
	n := copy(p, b.buf[b.head:b.tail])
	b.consumed(n)
	return n, nil
}

// Peek returns the next n bytes without consuming them, reading the
// connection until they are there; they are valid until the next call.
// With fewer, it returns those and the error that stopped it. n must not
// exceed readBufferSize.
func (b *readBuffer) Peek(n int) ([]byte, error) {
	for b.tail-b.head < n && b.err == nil {
		if b.buf != nil && readBufferSize-b.head < n {
			// Move what is left to the front: once a fill, and only
			// when what is needed would not fit behind it.
			b.tail = copy(b.buf[:], b.buf[b.head:b.tail])
			b.head = 0
		}
		b.fill()
	}
	if b.tail-b.head < n {
		var got []byte
		if b.buf != nil {
			got = b.buf[b.head:b.tail]
		}
		err := b.readErr()
		if err == io.EOF && len(got) > 0 {
			err = io.ErrUnexpectedEOF
		}
		return got, err
	}
	return b.buf[b.head : b.head+n], nil
}

// Discard consumes n bytes a Peek returned.
func (b *readBuffer) Discard(n int) { b.consumed(n) }

// Buffered returns the number of bytes that can be read from the buffer.
func (b *readBuffer) Buffered() int { return b.tail - b.head }

// fill reads once from the connection behind what is buffered; it
// records an error, or a reader that returns nothing many times in a row.
func (b *readBuffer) fill() {
	if b.buf == nil {
		b.buf = readBufferPool.Get().(*[readBufferSize]byte)
		b.head, b.tail = 0, 0
	}
	b.err = io.ErrNoProgress
	for range 100 {
		n, err := b.r.Read(b.buf[b.tail:])
		if n < 0 || n > readBufferSize-b.tail {
			b.err = errInvalidRead
			break
		}
		b.tail += n
		if n > 0 || err != nil {
			b.err = err
			break
		}
	}
	if b.tail == b.head {
		b.release()
	}
}

var errInvalidRead = errors.New("ssh: reader returned an invalid count")

func (b *readBuffer) consumed(n int) {
	b.head += n
	if b.head == b.tail {
		b.release()
	}
}

// release hands the buffer back to the pool once all of it was read.
func (b *readBuffer) release() {
	if b.buf != nil {
		readBufferPool.Put(b.buf)
		b.buf, b.head, b.tail = nil, 0, 0
	}
}

func (b *readBuffer) readErr() error {
	err := b.err
	b.err = nil
	return err
}
