// Copyright 2026 The Go Authors. All rights reserved.
// Use of this source code is governed by a BSD-style
// license that can be found in the LICENSE file.

package ssh

import (
	"crypto/rand"
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// kexInitGate passes packets through, but counts the KEXINIT messages it
// writes (signalling each after the first on written) and, if release is
// not nil, holds the second KEXINIT it reads until release is closed.
type kexInitGate struct {
	keyingTransport
	mu      sync.Mutex
	reads   int
	writes  int
	written chan struct{}
	release chan struct{}
}

func (g *kexInitGate) readPacket() ([]byte, error) {
	p, err := g.keyingTransport.readPacket()
	if err == nil && p[0] == msgKexInit {
		g.mu.Lock()
		g.reads++
		n := g.reads
		g.mu.Unlock()
		if n == 2 && g.release != nil {
			<-g.release
		}
	}
	return p, err
}

func (g *kexInitGate) writePacket(p []byte) error {
	kexInit := p[0] == msgKexInit
	err := g.keyingTransport.writePacket(p)
	if kexInit {
		g.mu.Lock()
		g.writes++
		n := g.writes
		g.mu.Unlock()
		if n == 2 {
			g.written <- struct{}{}
		}
	}
	return err
}

// TestRekeyMuxBlockedOnWrite checks that a key exchange this side starts
// completes while its connection layer is blocked on a write waiting for
// that key exchange. Here the server starts one, a channel writer fills
// the packets queued for after it and waits holding the channel's writeMu,
// and the client closes that channel: handling the close, the server's mux
// loop waits for the writeMu. The client's KEXINIT comes after more than
// chanSize other packets, so the server's read loop must read past packets
// its mux loop does not take, or it never reaches the KEXINIT: the key
// exchange, the writer and the mux loop then wait for each other for ever.
// If the connection ends instead, the waiting writer fails and the packets
// read still reach the mux loop.
func TestRekeyMuxBlockedOnWrite(t *testing.T) {
	t.Run("KEXINIT", func(t *testing.T) { testRekeyMuxBlockedOnWrite(t, false) })
	t.Run("EOF", func(t *testing.T) { testRekeyMuxBlockedOnWrite(t, true) })
}

func testRekeyMuxBlockedOnWrite(t *testing.T, eof bool) {
	a, b, err := netPipe()
	if err != nil {
		t.Fatalf("netPipe: %v", err)
	}
	defer a.Close()
	defer b.Close()

	clientGate := &kexInitGate{keyingTransport: newTransport(a, rand.Reader, true),
		written: make(chan struct{}, 1), release: make(chan struct{})}
	serverGate := &kexInitGate{keyingTransport: newTransport(b, rand.Reader, false),
		written: make(chan struct{}, 1)}
	var releaseOnce sync.Once
	release := func() { releaseOnce.Do(func() { close(clientGate.release) }) }
	defer release()
	clientConf := &ClientConfig{HostKeyCallback: InsecureIgnoreHostKey()}
	clientConf.SetDefaults()
	serverConf := &ServerConfig{}
	serverConf.AddHostKey(testSigners["ecdsa"])
	serverConf.SetDefaults()
	v := []byte("version")
	client := newClientTransport(clientGate, v, v, clientConf, "addr", a.RemoteAddr())
	server := newServerTransport(serverGate, v, v, serverConf)
	if err := server.waitSession(); err != nil {
		t.Fatalf("server.waitSession: %v", err)
	}
	if err := client.waitSession(); err != nil {
		t.Fatalf("client.waitSession: %v", err)
	}
	// The server's SSH_MSG_EXT_INFO, which client authentication reads.
	if p, err := client.readPacket(); err != nil || p[0] != msgExtInfo {
		t.Fatalf("client.readPacket: %v, %v; want SSH_MSG_EXT_INFO", p, err)
	}
	cm, sm := newMux(client), newMux(server)

	// Two channels: the server writes to the first and the client closes
	// it; the second carries the client's packets ahead of its KEXINIT.
	accepted := make(chan Channel, 2)
	go func() {
		for nc := range sm.incomingChannels {
			ch, reqs, err := nc.Accept()
			if err != nil {
				t.Errorf("Accept: %v", err)
				return
			}
			go DiscardRequests(reqs)
			accepted <- ch
		}
	}()
	var cch, sch [2]Channel
	for i := range cch {
		ch, reqs, err := cm.OpenChannel("session", nil)
		if err != nil {
			t.Fatalf("OpenChannel: %v", err)
		}
		go DiscardRequests(reqs)
		cch[i], sch[i] = ch, <-accepted
	}

	// The server starts a key exchange; the client does not see its
	// KEXINIT until released.
	server.requestKeyExchange()
	select {
	case <-serverGate.written:
	case <-time.After(10 * time.Second):
		t.Fatal("the server did not send its KEXINIT")
	}

	// One write more than the queue holds: the last waits for the key
	// exchange, holding the channel's writeMu.
	written := make(chan error, 1)
	go func() {
		for range maxPendingPackets + 1 {
			if _, err := sch[0].Write([]byte{1}); err != nil {
				written <- err
				return
			}
		}
		written <- nil
	}()
	deadline := time.Now().Add(10 * time.Second)
	for {
		server.mu.Lock()
		n := len(server.pendingPackets)
		server.mu.Unlock()
		if n == maxPendingPackets {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d packets queued, want %d", n, maxPendingPackets)
		}
		time.Sleep(time.Millisecond)
	}

	// The client closes the first channel, then sends more packets than
	// the server's read loop can hand over while its mux loop is blocked,
	// and only then its KEXINIT, or the end of the connection.
	if err := cch[0].Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	const more = 4 * chanSize
	for range more {
		if _, err := cch[1].Write([]byte{2}); err != nil {
			t.Fatalf("Write: %v", err)
		}
	}
	if eof {
		if err := a.(*net.TCPConn).CloseWrite(); err != nil {
			t.Fatalf("CloseWrite: %v", err)
		}
	} else {
		release()
	}

	select {
	case err := <-written:
		if eof && err == nil {
			t.Fatal("server Write: no error after the connection ended")
		}
		if !eof && err != nil {
			t.Fatalf("server Write: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("deadlock: the server's write still waits for the key exchange")
	}
	got := make(chan error, 1)
	go func() {
		buf := make([]byte, more)
		_, err := io.ReadFull(sch[1], buf)
		got <- err
	}()
	select {
	case err := <-got:
		if err != nil {
			t.Fatalf("server Read: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the server did not read the client's data")
	}
	if !eof {
		// The server answered the close: the client's channel ends.
		if _, err := io.ReadAll(cch[0]); err != nil {
			t.Fatalf("client ReadAll: %v", err)
		}
	}
	release()
	client.Close()
	server.Close()
}
