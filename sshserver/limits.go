package sshserver

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
)

// MaxStartups is sshd's MaxStartups start:rate:full: past start
// unauthenticated connections, a new one is dropped with probability
// rate%, rising linearly to 100% at full.
type MaxStartups struct{ Start, Rate, Full int }

// ParseMaxStartups reads start:rate:full, or a single number (full).
func ParseMaxStartups(v string) (MaxStartups, error) {
	parts := strings.Split(v, ":")
	var n []int
	for _, p := range parts {
		i, err := strconv.Atoi(p)
		if err != nil || i < 0 {
			return MaxStartups{}, fmt.Errorf("%q: want start:rate:full", v)
		}
		n = append(n, i)
	}
	var m MaxStartups
	switch len(n) {
	case 1:
		m = MaxStartups{n[0], 100, n[0]}
	case 3:
		m = MaxStartups{n[0], n[1], n[2]}
	default:
		return MaxStartups{}, fmt.Errorf("%q: want start:rate:full", v)
	}
	if err := m.check(); err != nil {
		return MaxStartups{}, fmt.Errorf("%q: %w", v, err)
	}
	return m, nil
}

// check accepts the zero value (no limit) and sane limits.
func (m MaxStartups) check() error {
	if m == (MaxStartups{}) || (m.Start > 0 && m.Start <= m.Full && m.Rate <= 100) {
		return nil
	}
	return errors.New("want start:rate:full with 0 < start <= full and rate <= 100")
}

// drop decides for a new connection while n others are unauthenticated.
func (m MaxStartups) drop(n int, r func(int) int) bool {
	switch {
	case m.Full == 0 || n < m.Start:
		return false
	case n >= m.Full:
		return true
	}
	p := m.Rate
	if m.Full > m.Start {
		p += (100 - m.Rate) * (n - m.Start) / (m.Full - m.Start)
	}
	return r(100) < p
}

// sources counts unauthenticated connections by source, for
// PerSourceMaxStartups (sshd's PerSourceMaxStartups): a source at its
// limit has its new connections dropped, so that one source cannot
// crowd the others out of MaxStartups. The zero value is ready to use.
type sources struct {
	mu sync.Mutex
	n  map[netip.Prefix]int // sources with a connection counted; none at 0
}

// sourceOf returns the source a connection from remote counts under: an
// IPv4 address (/32), or the /64 of an IPv6 address, since one host can
// take any address in its /64 (sshd counts each address unless
// PerSourceNetBlockSize says otherwise). It is the zero Prefix for an
// address the limit does not apply to: not TCP, or loopback (127.0.0.0/8,
// ::1) when exemptLoopback.
func sourceOf(remote net.Addr, exemptLoopback bool) netip.Prefix {
	a, ok := remote.(*net.TCPAddr)
	if !ok {
		return netip.Prefix{}
	}
	ip := a.AddrPort().Addr().Unmap().WithZone("")
	if !ip.IsValid() || (exemptLoopback && ip.IsLoopback()) {
		return netip.Prefix{}
	}
	bits := 64
	if ip.Is4() {
		bits = 32
	}
	p, _ := ip.Prefix(bits)
	return p
}

// enter counts a new connection from src and returns true, unless src
// has limit counted already: then it returns false and counts nothing.
func (s *sources) enter(src netip.Prefix, limit int) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.n[src] >= limit {
		return false
	}
	if s.n == nil {
		s.n = map[netip.Prefix]int{}
	}
	s.n[src]++
	return true
}

// leave counts a connection from src out.
func (s *sources) leave(src netip.Prefix) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.n[src]--; s.n[src] <= 0 {
		delete(s.n, src)
	}
}

// counted returns the number of connections counted for each source.
func (s *sources) counted() map[netip.Prefix]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return maps.Clone(s.n)
}
