// Copyright 2012 The Go Authors. All rights reserved.
// Use of this source code is governed by a BSD-style
// license that can be found in the LICENSE file.

package ssh

import (
	"io"
	"sync"
)

// buffer provides a linked list buffer for data exchange
// between producer and consumer. Theoretically the buffer is
// of unlimited capacity as it does no allocation of its own.
type buffer struct {
	// protects concurrent access to head, tail and closed
	*sync.Cond

	head *element // the buffer that will be read first
	tail *element // the buffer that will be read last

	closed bool
}

// An element represents a single link in a linked list.
type element struct {
	buf  []byte
	next *element
	// packet is the whole packet buf is part of, for recyclePacket once
	// buf has been read, or nil.
	packet []byte
}

// newBuffer returns an empty buffer that is not closed.
func newBuffer() *buffer {
	e := new(element)
	b := &buffer{
		Cond: newCond(),
		head: e,
		tail: e,
	}
	return b
}

// write makes buf available for Read to receive.
// buf must not be modified after the call to write.
// write appends buf to the buffer. If packet is not nil, buf is part of
// it and nothing else refers to packet: it is recycled once buf is read.
func (b *buffer) write(buf, packet []byte) {
	b.Cond.L.Lock()
	e := &element{buf: buf, packet: packet}
	b.tail.next = e
	b.tail = e
	b.Cond.Signal()
	b.Cond.L.Unlock()
}

// eof closes the buffer. Reads from the buffer once all
// the data has been consumed will receive io.EOF.
func (b *buffer) eof() {
	b.Cond.L.Lock()
	b.closed = true
	b.Cond.Signal()
	b.Cond.L.Unlock()
}

// Read reads data from the internal buffer in buf.  Reads will block
// if no data is available, or until the buffer is closed.
func (b *buffer) Read(buf []byte) (n int, err error) {
	b.Cond.L.Lock()
	defer b.Cond.L.Unlock()

	for len(buf) > 0 {
		// if there is data in b.head, copy it
		if len(b.head.buf) > 0 {
			r := copy(buf, b.head.buf)
			buf, b.head.buf = buf[r:], b.head.buf[r:]
			n += r
			if len(b.head.buf) == 0 && b.head.packet != nil {
				recyclePacket(b.head.packet)
				b.head.buf, b.head.packet = nil, nil
			}
			continue
		}
		// if there is a next buffer, make it the head
		if len(b.head.buf) == 0 && b.head != b.tail {
			b.head = b.head.next
			continue
		}

		// if at least one byte has been copied, return
		if n > 0 {
			break
		}

		// if nothing was read, and there is nothing outstanding
		// check to see if the buffer is closed.
		if b.closed {
			err = io.EOF
			break
		}
		// out of buffers, wait for producer
		b.Cond.Wait()
	}
	return
}

// peekMaxBufs bounds the slices one peek appends, well under the
// IOV_MAX of 1024 a writev(2) takes.
const peekMaxBufs = 64

// peek appends to bufs up to max bytes of the buffered data, in at most
// peekMaxBufs slices of the buffers that hold it, waiting for data if
// there is none; io.EOF once the buffer is closed and empty. The slices
// stay valid until discard.
func (b *buffer) peek(bufs [][]byte, max int) ([][]byte, error) {
	if max <= 0 {
		return bufs, nil
	}
	b.Cond.L.Lock()
	defer b.Cond.L.Unlock()
	for {
		n, k := 0, 0
		for e := b.head; e != nil && n < max && k < peekMaxBufs; e = e.next {
			if len(e.buf) == 0 {
				continue
			}
			take := min(len(e.buf), max-n)
			bufs = append(bufs, e.buf[:take:take])
			n += take
			k++
		}
		if n > 0 {
			return bufs, nil
		}
		if b.closed {
			return bufs, io.EOF
		}
		b.Cond.Wait()
	}
}

// discard consumes up to n bytes from the head of the buffer, as Read
// would without the copy, recycling the packets it empties; it returns how
// many it consumed.
func (b *buffer) discard(n int) (consumed int) {
	b.Cond.L.Lock()
	defer b.Cond.L.Unlock()
	for consumed < n {
		if len(b.head.buf) > 0 {
			r := min(n-consumed, len(b.head.buf))
			b.head.buf = b.head.buf[r:]
			consumed += r
			if len(b.head.buf) == 0 && b.head.packet != nil {
				recyclePacket(b.head.packet)
				b.head.buf, b.head.packet = nil, nil
			}
			continue
		}
		if b.head == b.tail {
			return consumed
		}
		b.head = b.head.next
	}
	return consumed
}
