package sshserver

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
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
