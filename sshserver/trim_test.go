package sshserver

import (
	"context"
	"testing"
	"time"
)

// TestIdleTrim: the trim runs once the last connection has gone and the
// delay has passed, not while any connection is open.
func TestIdleTrim(t *testing.T) {
	trimmed := make(chan struct{}, 10)
	tr := newIdleTrim(20*time.Millisecond, func() { trimmed <- struct{}{} })
	defer tr.stop()

	ctx1, end1 := context.WithCancel(context.Background())
	ctx2, end2 := context.WithCancel(context.Background())
	tr.opened(ctx1)
	tr.opened(ctx2)
	end1()
	// One connection is still open: no trim, however long we wait.
	select {
	case <-trimmed:
		t.Fatal("trimmed with a connection open")
	case <-time.After(200 * time.Millisecond):
	}
	end2()
	select {
	case <-trimmed:
	case <-time.After(10 * time.Second):
		t.Fatal("no trim after the last connection went")
	}
	// A connection that comes before the delay is over stops the trim.
	ctx3, end3 := context.WithCancel(context.Background())
	tr.opened(ctx3)
	end3()
	tr.opened(context.Background())
	select {
	case <-trimmed:
		t.Fatal("trimmed although a connection came back")
	case <-time.After(200 * time.Millisecond):
	}
}
