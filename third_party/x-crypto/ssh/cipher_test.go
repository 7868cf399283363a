// Copyright 2011 The Go Authors. All rights reserved.
// Use of this source code is governed by a BSD-style
// license that can be found in the LICENSE file.

package ssh

import (
	"bufio"
	"bytes"
	"crypto"
	"crypto/des"
	"crypto/rand"
	"encoding/binary"
	"io"
	"testing"

	"golang.org/x/crypto/chacha20"
	"golang.org/x/crypto/internal/poly1305"
)

func TestDefaultCiphersExist(t *testing.T) {
	for _, cipherAlgo := range supportedCiphers {
		if _, ok := cipherModes[cipherAlgo]; !ok {
			t.Errorf("supported cipher %q is unknown", cipherAlgo)
		}
	}
	for _, cipherAlgo := range defaultCiphers {
		if _, ok := cipherModes[cipherAlgo]; !ok {
			t.Errorf("preferred cipher %q is unknown", cipherAlgo)
		}
	}
}

func TestPacketCiphers(t *testing.T) {
	defaultMac := HMACSHA256
	defaultCipher := CipherAES128CTR
	for cipher := range cipherModes {
		t.Run("cipher="+cipher,
			func(t *testing.T) { testPacketCipher(t, cipher, defaultMac) })
	}
	for mac := range macModes {
		t.Run("mac="+mac,
			func(t *testing.T) { testPacketCipher(t, defaultCipher, mac) })
	}
}

// TestCBCEtMMinimalPacket checks that a packet as small as the ones OpenSSH
// sends is accepted. OpenSSH computes the padding for EtM MACs so that the
// encrypted portion alone is block aligned, and does not enforce the 16 bytes
// minimum packet size, so with a 8 bytes block size a single byte payload is
// sent as a 12 bytes packet.
func TestCBCEtMMinimalPacket(t *testing.T) {
	kr := &kexResult{Hash: crypto.SHA1}
	algs := DirectionAlgorithms{Cipher: InsecureCipherTripleDESCBC, MAC: HMACSHA256ETM, compression: compressionNone}
	writer, err := newPacketCipher(clientKeys, algs, kr)
	if err != nil {
		t.Fatalf("newPacketCipher: %v", err)
	}
	reader, err := newPacketCipher(clientKeys, algs, kr)
	if err != nil {
		t.Fatalf("newPacketCipher: %v", err)
	}
	cbc := writer.(*cbcCipher)

	payload := []byte{msgRequestFailure}
	// blockSize - (padding length byte + payload) % blockSize
	paddingLength := des.BlockSize - (1+len(payload))%des.BlockSize
	length := 1 + len(payload) + paddingLength
	packet := make([]byte, 4+length)
	binary.BigEndian.PutUint32(packet, uint32(length))
	packet[4] = byte(paddingLength)
	copy(packet[5:], payload)
	if _, err := io.ReadFull(rand.Reader, packet[5+len(payload):]); err != nil {
		t.Fatalf("ReadFull: %v", err)
	}
	cbc.encrypter.CryptBlocks(packet[4:], packet[4:])
	cbc.mac.Reset()
	cbc.mac.Write(make([]byte, 4)) // sequence number 0
	cbc.mac.Write(packet)
	packet = cbc.mac.Sum(packet)

	got, err := reader.readCipherPacket(0, bytes.NewReader(packet))
	if err != nil {
		t.Fatalf("readCipherPacket: %v", err)
	}
	if !bytes.Equal(got, payload) {
		t.Errorf("got payload %v, want %v", got, payload)
	}
}

func testPacketCipher(t *testing.T, cipher, mac string) {
	kr := &kexResult{Hash: crypto.SHA1}
	algs := DirectionAlgorithms{
		Cipher:      cipher,
		MAC:         mac,
		compression: compressionNone,
	}
	client, err := newPacketCipher(clientKeys, algs, kr)
	if err != nil {
		t.Fatalf("newPacketCipher(client, %q, %q): %v", cipher, mac, err)
	}
	server, err := newPacketCipher(clientKeys, algs, kr)
	if err != nil {
		t.Fatalf("newPacketCipher(client, %q, %q): %v", cipher, mac, err)
	}

	want := "bla bla"
	input := []byte(want)
	buf := &bytes.Buffer{}
	if err := client.writeCipherPacket(0, buf, rand.Reader, input); err != nil {
		t.Fatalf("writeCipherPacket(%q, %q): %v", cipher, mac, err)
	}

	packet, err := server.readCipherPacket(0, buf)
	if err != nil {
		t.Fatalf("readCipherPacket(%q, %q): %v", cipher, mac, err)
	}

	if string(packet) != want {
		t.Errorf("roundtrip(%q, %q): got %q, want %q", cipher, mac, packet, want)
	}
}

func TestCBCOracleCounterMeasure(t *testing.T) {
	kr := &kexResult{Hash: crypto.SHA1}
	algs := DirectionAlgorithms{
		Cipher:      InsecureCipherAES128CBC,
		MAC:         HMACSHA1,
		compression: compressionNone,
	}
	client, err := newPacketCipher(clientKeys, algs, kr)
	if err != nil {
		t.Fatalf("newPacketCipher(client): %v", err)
	}

	want := "bla bla"
	input := []byte(want)
	buf := &bytes.Buffer{}
	if err := client.writeCipherPacket(0, buf, rand.Reader, input); err != nil {
		t.Errorf("writeCipherPacket: %v", err)
	}

	packetSize := buf.Len()
	buf.Write(make([]byte, 2*maxPacket))

	// We corrupt each byte, but this usually will only test the
	// 'packet too large' or 'MAC failure' cases.
	lastRead := -1
	for i := 0; i < packetSize; i++ {
		server, err := newPacketCipher(clientKeys, algs, kr)
		if err != nil {
			t.Fatalf("newPacketCipher(client): %v", err)
		}

		fresh := &bytes.Buffer{}
		fresh.Write(buf.Bytes())
		fresh.Bytes()[i] ^= 0x01

		before := fresh.Len()
		_, err = server.readCipherPacket(0, fresh)
		if err == nil {
			t.Errorf("corrupt byte %d: readCipherPacket succeeded ", i)
			continue
		}
		if _, ok := err.(cbcError); !ok {
			t.Errorf("corrupt byte %d: got %v (%T), want cbcError", i, err, err)
			continue
		}

		after := fresh.Len()
		bytesRead := before - after
		if bytesRead < maxPacket {
			t.Errorf("corrupt byte %d: read %d bytes, want more than %d", i, bytesRead, maxPacket)
			continue
		}

		if i > 0 && bytesRead != lastRead {
			t.Errorf("corrupt byte %d: read %d bytes, want %d bytes read", i, bytesRead, lastRead)
		}
		lastRead = bytesRead
	}
}

func TestCVE202143565(t *testing.T) {
	tests := []struct {
		cipher          string
		constructPacket func(packetCipher) io.Reader
	}{
		{
			cipher: CipherAES128GCM,
			constructPacket: func(client packetCipher) io.Reader {
				internalCipher := client.(*gcmCipher)
				b := &bytes.Buffer{}
				prefix := [4]byte{}
				if _, err := b.Write(prefix[:]); err != nil {
					t.Fatal(err)
				}
				internalCipher.buf = internalCipher.aead.Seal(internalCipher.buf[:0], internalCipher.iv, []byte{}, prefix[:])
				if _, err := b.Write(internalCipher.buf); err != nil {
					t.Fatal(err)
				}
				internalCipher.incIV()

				return b
			},
		},
		{
			cipher: CipherChaCha20Poly1305,
			constructPacket: func(client packetCipher) io.Reader {
				internalCipher := client.(*chacha20Poly1305Cipher)
				b := &bytes.Buffer{}

				nonce := make([]byte, 12)
				s, err := chacha20.NewUnauthenticatedCipher(internalCipher.contentKey[:], nonce)
				if err != nil {
					t.Fatal(err)
				}
				var polyKey, discardBuf [32]byte
				s.XORKeyStream(polyKey[:], polyKey[:])
				s.XORKeyStream(discardBuf[:], discardBuf[:]) // skip the next 32 bytes

				internalCipher.buf = make([]byte, 4+poly1305.TagSize)
				binary.BigEndian.PutUint32(internalCipher.buf, 0)
				ls, err := chacha20.NewUnauthenticatedCipher(internalCipher.lengthKey[:], nonce)
				if err != nil {
					t.Fatal(err)
				}
				ls.XORKeyStream(internalCipher.buf, internalCipher.buf[:4])
				if _, err := io.ReadFull(rand.Reader, internalCipher.buf[4:4]); err != nil {
					t.Fatal(err)
				}

				s.XORKeyStream(internalCipher.buf[4:], internalCipher.buf[4:4])

				var tag [poly1305.TagSize]byte
				poly1305.Sum(&tag, internalCipher.buf[:4], &polyKey)

				copy(internalCipher.buf[4:], tag[:])

				if _, err := b.Write(internalCipher.buf); err != nil {
					t.Fatal(err)
				}

				return b
			},
		},
	}

	for _, tc := range tests {
		mac := HMACSHA256

		kr := &kexResult{Hash: crypto.SHA1}
		algs := DirectionAlgorithms{
			Cipher:      tc.cipher,
			MAC:         mac,
			compression: compressionNone,
		}
		client, err := newPacketCipher(clientKeys, algs, kr)
		if err != nil {
			t.Fatalf("newPacketCipher(client, %q, %q): %v", tc.cipher, mac, err)
		}
		server, err := newPacketCipher(clientKeys, algs, kr)
		if err != nil {
			t.Fatalf("newPacketCipher(client, %q, %q): %v", tc.cipher, mac, err)
		}

		b := tc.constructPacket(client)

		wantErr := "ssh: empty packet"
		_, err = server.readCipherPacket(0, b)
		if err == nil {
			t.Fatalf("readCipherPacket(%q, %q): didn't fail with empty packet", tc.cipher, mac)
		} else if err.Error() != wantErr {
			t.Fatalf("readCipherPacket(%q, %q): unexpected error, got %q, want %q", tc.cipher, mac, err, wantErr)
		}
	}
}

// writeCounter counts the Write calls that reach it.
type writeCounter struct {
	bytes.Buffer
	writes int
}

func (w *writeCounter) Write(p []byte) (int, error) {
	w.writes++
	return w.Buffer.Write(p)
}

// TestGCMPacketOneWrite checks that an AES-GCM packet larger than the
// transport's bufio.Writer reaches the connection in one Write, as the
// other ciphers' packets do, and still reads back.
func TestGCMPacketOneWrite(t *testing.T) {
	for _, cipher := range []string{CipherAES128GCM, CipherAES256GCM} {
		t.Run(cipher, func(t *testing.T) {
			kr := &kexResult{Hash: crypto.SHA256}
			algs := DirectionAlgorithms{Cipher: cipher, compression: compressionNone}
			client, err := newPacketCipher(clientKeys, algs, kr)
			if err != nil {
				t.Fatalf("newPacketCipher: %v", err)
			}
			server, err := newPacketCipher(clientKeys, algs, kr)
			if err != nil {
				t.Fatalf("newPacketCipher: %v", err)
			}
			conn := &writeCounter{}
			w := bufio.NewWriter(conn)
			for _, size := range []int{32 << 10, 10, 5000} {
				want := bytes.Repeat([]byte{byte(size)}, size)
				conn.writes = 0
				if err := client.writeCipherPacket(0, w, rand.Reader, want); err != nil {
					t.Fatalf("writeCipherPacket(%d bytes): %v", size, err)
				}
				if err := w.Flush(); err != nil {
					t.Fatalf("Flush: %v", err)
				}
				if conn.writes != 1 {
					t.Errorf("%d-byte packet: %d writes, want 1", size, conn.writes)
				}
				got, err := server.readCipherPacket(0, &conn.Buffer)
				if err != nil {
					t.Fatalf("readCipherPacket(%d bytes): %v", size, err)
				}
				if !bytes.Equal(got, want) {
					t.Errorf("%d-byte packet did not read back", size)
				}
			}
		})
	}
}

// chacha20Poly1305Reference seals a packet as chacha20-poly1305@openssh.com
// is specified (PROTOCOL.chacha20poly1305), with package chacha20 alone.
func chacha20Poly1305Reference(lengthKey, contentKey []byte, seqNum uint32, payload, padding []byte) ([]byte, error) {
	nonce := make([]byte, 12)
	binary.BigEndian.PutUint32(nonce[8:], seqNum)
	packet := binary.BigEndian.AppendUint32(nil, uint32(1+len(payload)+len(padding)))
	ls, err := chacha20.NewUnauthenticatedCipher(lengthKey, nonce)
	if err != nil {
		return nil, err
	}
	ls.XORKeyStream(packet, packet)
	s, err := chacha20.NewUnauthenticatedCipher(contentKey, nonce)
	if err != nil {
		return nil, err
	}
	var polyKey [32]byte
	s.XORKeyStream(polyKey[:], polyKey[:])
	s.SetCounter(1)
	body := append(append([]byte{byte(len(padding))}, payload...), padding...)
	s.XORKeyStream(body, body)
	packet = append(packet, body...)
	var mac [poly1305.TagSize]byte
	poly1305.Sum(&mac, packet, &polyKey)
	return append(packet, mac[:]...), nil
}

// TestChaCha20Poly1305Reference checks chacha20-poly1305@openssh.com
// packets against the specified construction, byte for byte both ways,
// for lengths around chacha20's 64-byte blocks and the largest packets.
func TestChaCha20Poly1305Reference(t *testing.T) {
	kr := &kexResult{Hash: crypto.SHA256}
	algs := DirectionAlgorithms{Cipher: CipherChaCha20Poly1305, compression: compressionNone}
	for _, seqNum := range []uint32{0, 1, 1<<32 - 1} {
		for _, n := range []int{1, 15, 16, 58, 59, 63, 64, 65, 122, 127, 128, 255, 256, 1000, 4096, 32768, 35000} {
			pc, err := newPacketCipher(clientKeys, algs, kr)
			if err != nil {
				t.Fatalf("newPacketCipher: %v", err)
			}
			c := pc.(*chacha20Poly1305Cipher)
			payload := make([]byte, n)
			for i := range payload {
				payload[i] = byte(i*7 + n)
			}
			padding := make([]byte, 8-(1+n)%8)
			if len(padding) < 4 {
				padding = make([]byte, len(padding)+8)
			}
			want, err := chacha20Poly1305Reference(c.lengthKey[:], c.contentKey[:], seqNum, payload, padding)
			if err != nil {
				t.Fatal(err)
			}

			var got bytes.Buffer
			if err := c.writeCipherPacket(seqNum, &got, bytes.NewReader(make([]byte, 64)), payload); err != nil {
				t.Fatalf("seq %d, %d bytes: writeCipherPacket: %v", seqNum, n, err)
			}
			if !bytes.Equal(got.Bytes(), want) {
				t.Fatalf("seq %d, %d bytes: packet differs from the reference construction", seqNum, n)
			}

			read, err := c.readCipherPacket(seqNum, bytes.NewReader(want))
			if err != nil {
				t.Fatalf("seq %d, %d bytes: readCipherPacket: %v", seqNum, n, err)
			}
			if !bytes.Equal(read, payload) {
				t.Fatalf("seq %d, %d bytes: read back a different payload", seqNum, n)
			}
		}
	}
}

func BenchmarkChaCha20Poly1305Packet(b *testing.B) {
	kr := &kexResult{Hash: crypto.SHA256}
	algs := DirectionAlgorithms{Cipher: CipherChaCha20Poly1305, compression: compressionNone}
	client, err := newPacketCipher(clientKeys, algs, kr)
	if err != nil {
		b.Fatal(err)
	}
	server, err := newPacketCipher(clientKeys, algs, kr)
	if err != nil {
		b.Fatal(err)
	}
	payload := make([]byte, 32768)
	var packet bytes.Buffer
	b.SetBytes(int64(len(payload)))
	for b.Loop() {
		packet.Reset()
		if err := client.writeCipherPacket(0, &packet, rand.Reader, payload); err != nil {
			b.Fatal(err)
		}
		if _, err := server.readCipherPacket(0, &packet); err != nil {
			b.Fatal(err)
		}
	}
}
