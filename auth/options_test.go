package auth

import (
	"net"
	"testing"
	"time"
)

func TestParseOptions(t *testing.T) {
	o, err := ParseOptions([]string{`restrict`, `command="nix-store --serve --write"`, `from="10.0.0.0/8,!10.1.2.3,127.0.0.*"`,
		`environment="NIX_REMOTE=daemon"`, `expiry-time="20991231"`, `no-touch-required`, `permitopen="x:1"`})
	if err != nil {
		t.Fatal(err)
	}
	if !o.NoPty || o.Command == nil || *o.Command != "nix-store --serve --write" || len(o.From) != 3 ||
		o.Environment[0] != "NIX_REMOTE=daemon" || o.Expiry.Year() != 2099 || !o.NoTouchRequired {
		t.Errorf("parsed %+v", o)
	}
	if o, _ := ParseOptions([]string{"restrict", "pty"}); o.NoPty {
		t.Error("restrict,pty must allow a pty")
	}
	for _, bad := range [][]string{{"frobnicate"}, {"verify-required"}, {"command"}, {`command=unquoted`},
		{`from="10.0.0.0/99"`}, {`environment="=x"`}, {`environment="A-B=1"`}, {`expiry-time="2099"`},
		{`command="a"`, `command="b"`}, {`from="[a-z]"`}} {
		if _, err := ParseOptions(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestFromAllows(t *testing.T) {
	o, _ := ParseOptions([]string{`from="10.0.0.0/8,!10.1.2.3,127.0.0.*,::1"`})
	for addr, want := range map[string]bool{
		"10.9.9.9:1": true, "10.1.2.3:1": false, "127.0.0.1:22": true, "192.168.1.1:1": false,
		"[::1]:22": true, "[::ffff:127.0.0.5]:22": true,
	} {
		a, _ := net.ResolveTCPAddr("tcp", addr)
		if got := o.FromAllows(a); got != want {
			t.Errorf("from %s: %v, want %v", addr, got, want)
		}
	}
}

func TestExpiry(t *testing.T) {
	o, _ := ParseOptions([]string{`expiry-time="202001011200"`})
	if !o.Expired(time.Now()) {
		t.Error("a 2020 expiry has not expired")
	}
	o, _ = ParseOptions(nil)
	if o.Expired(time.Now()) {
		t.Error("no expiry expired")
	}
	if _, err := ParseOptions([]string{`expiry-time="20200101120000"`}); err != nil {
		t.Error(err)
	}
}
