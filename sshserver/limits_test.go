package sshserver

import "testing"

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
