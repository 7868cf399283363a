package sshserver

import (
	"context"
	"sync/atomic"
	"time"
)

// trimDelay is how long the server must have had no connection before it
// returns the memory of past transfers to the kernel.
const trimDelay = 5 * time.Second

// idleTrim returns freed memory to the kernel once the server has been
// without connections for a while. Transfers allocate little (received
// packets and copy buffers come from pools), so no collection runs after
// them, and a builder idle between builds would keep their buffers for
// minutes. One forced collection per idle spell costs milliseconds.
type idleTrim struct {
	delay time.Duration
	conns atomic.Int64
	timer *time.Timer // runs trim once the last connection has gone
	trim  func()
}

func newIdleTrim(delay time.Duration, trim func()) *idleTrim {
	t := &idleTrim{delay: delay, trim: trim}
	t.timer = time.AfterFunc(delay, t.fire)
	t.timer.Stop()
	return t
}

// opened counts a connection in until ctx, the connection's, is done.
func (t *idleTrim) opened(ctx context.Context) {
	t.conns.Add(1)
	context.AfterFunc(ctx, func() {
		if t.conns.Add(-1) == 0 {
			t.timer.Reset(t.delay)
		}
	})
}

// fire trims unless a connection came meanwhile.
func (t *idleTrim) fire() {
	if t.conns.Load() == 0 {
		t.trim()
	}
}

// stop cancels a pending trim.
func (t *idleTrim) stop() { t.timer.Stop() }
