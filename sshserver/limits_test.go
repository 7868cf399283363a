package sshserver

import (
	"net"
	"net/netip"
	"testing"
)

func TestMaxStartups(t *testing.T) {
	m, err := ParseMaxStartups("10:30:100")
	if err != nil || m != (MaxStartups{10, 30, 100}) {
		t.Fatalf("%+v %v", m, err)
	}
	for _, bad := range []string{"", "0", "a:b:c", "10:30", "100:30:10", "10:130:100", "-1:0:5"} {
		if _, err := ParseMaxStartups(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	if m, _ := ParseMaxStartups("5"); m != (MaxStartups{5, 100, 5}) {
		t.Errorf("single number: %+v", m)
	}
	always := func(int) int { return 0 }
	never := func(int) int { return 99 }
	for _, tc := range []struct {
		n    int
		r    func(int) int
		drop bool
	}{{9, always, false}, {10, always, true}, {10, never, false}, {99, func(int) int { return 98 }, true}, {100, never, true}, {150, never, true}} {
		if got := m0().drop(tc.n, tc.r); got != tc.drop {
			t.Errorf("n=%d: drop %v, want %v", tc.n, got, tc.drop)
		}
	}
	if (MaxStartups{}).drop(1000, always) {
		t.Error("zero MaxStartups drops")
	}
}

func m0() MaxStartups { return MaxStartups{10, 30, 100} }

func TestSourceOf(t *testing.T) {
	tcp := func(s string) net.Addr { return net.TCPAddrFromAddrPort(netip.MustParseAddrPort(s)) }
	for _, tc := range []struct {
		remote net.Addr
		exempt bool
		want   string // "": not limited
	}{
		{tcp("192.0.2.7:5000"), false, "192.0.2.7/32"},
		{tcp("192.0.2.7:5000"), true, "192.0.2.7/32"},
		{tcp("[::ffff:192.0.2.7]:5000"), false, "192.0.2.7/32"},
		{tcp("127.0.0.1:5000"), false, "127.0.0.1/32"},
		{tcp("127.3.2.1:5000"), true, ""},
		{tcp("[::1]:5000"), true, ""},
		{tcp("[::ffff:127.0.0.1]:5000"), true, ""},
		{tcp("[2001:db8:1:2:3:4:5:6]:5000"), false, "2001:db8:1:2::/64"},
		{tcp("[2001:db8:1:2:ffff::9]:5000"), true, "2001:db8:1:2::/64"},
		{tcp("[fe80::1%eth0]:5000"), false, "fe80::/64"},
		{&net.UnixAddr{Name: "@x", Net: "unix"}, false, ""},
	} {
		got := sourceOf(tc.remote, tc.exempt)
		if (tc.want == "" && got.IsValid()) || (tc.want != "" && got.String() != tc.want) {
			t.Errorf("sourceOf(%v, exempt %v) = %v, want %q", tc.remote, tc.exempt, got, tc.want)
		}
	}
}

func TestSources(t *testing.T) {
	var s sources
	a, b := netip.MustParsePrefix("192.0.2.1/32"), netip.MustParsePrefix("2001:db8::/64")
	for i := range 3 {
		if !s.enter(a, 3) {
			t.Fatalf("connection %d from a refused under the limit", i)
		}
	}
	if s.enter(a, 3) {
		t.Error("a fourth connection from a admitted with limit 3")
	}
	if !s.enter(b, 3) {
		t.Error("b refused while a is at its limit")
	}
	if got := s.counted(); len(got) != 2 || got[a] != 3 || got[b] != 1 {
		t.Errorf("counted %v, want a: 3, b: 1", got)
	}
	s.leave(a)
	if !s.enter(a, 3) {
		t.Error("a refused after one of its connections left")
	}
	for range 3 {
		s.leave(a)
	}
	s.leave(b)
	if got := s.counted(); len(got) != 0 {
		t.Errorf("sources with no connection left are kept: %v", got)
	}
}
