package auth

import (
	"strings"
	"testing"
)

func TestClientHost(t *testing.T) {
	for listen, want := range map[string]string{
		"127.0.0.1:2222": "127.0.0.1 2222", "0.0.0.0:2222": "127.0.0.1 2222", ":2222": "127.0.0.1 2222",
		"[::]:22": "::1 22", "192.0.2.7:2200": "192.0.2.7 2200",
	} {
		h, p, err := ClientHost(listen)
		if err != nil || h+" "+p != want {
			t.Errorf("ClientHost(%q) = %q %q %v, want %q", listen, h, p, err, want)
		}
	}
	if _, _, err := ClientHost("no-port"); err == nil {
		t.Error("address without port accepted")
	}
}

func TestKnownHostsText(t *testing.T) {
	k := newPub(t)
	got := KnownHosts(k, "darling-builder", "127.0.0.1", "2222")
	want := "darling-builder " + AuthorizedKeyLine(k) + "\n[127.0.0.1]:2222 " + AuthorizedKeyLine(k) + "\n[localhost]:2222 " + AuthorizedKeyLine(k) + "\n"
	if got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
	if KnownHostsName("127.0.0.1", "22") != "127.0.0.1" {
		t.Error("port 22 is written bare by ssh")
	}
}

func TestBuilderText(t *testing.T) {
	k := newPub(t)
	b := Builder{Alias: "darling-builder", Protocol: "ssh-ng", User: "root", Systems: []string{"x86_64-darwin"},
		Identity: "/etc/nix/darling-builder-key", MaxJobs: 4, SpeedFactor: 2, SupportedFeatures: []string{"big-parallel", "benchmark"},
		Host: "127.0.0.1", Port: "2222", KnownHosts: "/var/lib/darling-sshd/known_hosts", PublicHostKey: k}
	if err := b.Check(); err != nil {
		t.Fatal(err)
	}
	want := "ssh-ng://root@darling-builder x86_64-darwin /etc/nix/darling-builder-key 4 2 big-parallel,benchmark - " + PublicHostKeyBase64(k)
	if got := b.MachinesLine(); got != want {
		t.Errorf("machines line\n got %q\nwant %q", got, want)
	}
	b.PublicHostKey = nil
	if f := strings.Fields(b.MachinesLine()); len(f) != 8 || f[7] != "-" {
		t.Errorf("without host key: %q", b.MachinesLine())
	}
	cfg := b.SSHConfig()
	for _, l := range []string{"Host darling-builder\n", "  HostName 127.0.0.1\n", "  Port 2222\n", "  User root\n",
		"  IdentityFile /etc/nix/darling-builder-key\n", "  HostKeyAlias darling-builder\n",
		"  UserKnownHostsFile /var/lib/darling-sshd/known_hosts\n", "  Ciphers aes128-gcm@openssh.com,"} {
		if !strings.Contains(cfg, l) {
			t.Errorf("ssh config lacks %q:\n%s", l, cfg)
		}
	}
	for _, bad := range []Builder{
		{Alias: "a b", Protocol: "ssh", User: "root", Systems: []string{"x"}, Identity: "/k", MaxJobs: 1, SpeedFactor: 1},
		{Alias: "a", Protocol: "http", User: "root", Systems: []string{"x"}, Identity: "/k", MaxJobs: 1, SpeedFactor: 1},
		{Alias: "a", Protocol: "ssh", User: "root", Identity: "/k", MaxJobs: 1, SpeedFactor: 1},
		{Alias: "a", Protocol: "ssh", User: "root", Systems: []string{"x"}, Identity: "/k", MaxJobs: 0, SpeedFactor: 1},
	} {
		if err := bad.Check(); err == nil {
			t.Errorf("%+v accepted", bad)
		}
	}
}
