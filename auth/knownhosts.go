package auth

import (
	"fmt"
	"net"
	"strings"

	gossh "golang.org/x/crypto/ssh"
)

// ClientHost turns a listen address into the host and port a client on
// this machine dials: an unspecified address (0.0.0.0, ::, empty) is
// reached through loopback.
func ClientHost(listen string) (host, port string, err error) {
	host, port, err = net.SplitHostPort(listen)
	if err != nil {
		return "", "", fmt.Errorf("listen address %q: %w", listen, err)
	}
	switch ip := net.ParseIP(host); {
	case host == "" || (ip != nil && ip.IsUnspecified() && ip.To4() != nil):
		host = "127.0.0.1"
	case ip != nil && ip.IsUnspecified():
		host = "::1"
	}
	return host, port, nil
}

// KnownHostsName is how ssh names host:port in known_hosts.
func KnownHostsName(host, port string) string {
	if port == "22" {
		return host
	}
	return "[" + host + "]:" + port
}

// KnownHosts returns known_hosts text trusting pub under alias (what a
// HostKeyAlias looks up) and under the address clients dial; a loopback
// address also as localhost, which people type.
func KnownHosts(pub gossh.PublicKey, alias, host, port string) string {
	line := AuthorizedKeyLine(pub)
	names := []string{alias, KnownHostsName(host, port)}
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		names = append(names, KnownHostsName("localhost", port))
	}
	var b strings.Builder
	for _, name := range names {
		if name != "" {
			b.WriteString(name + " " + line + "\n")
		}
	}
	return b.String()
}

// WriteKnownHosts writes known_hosts text atomically, readable by all: it
// holds only public keys.
func WriteKnownHosts(path, text string) error {
	if err := writeFileAtomic(path, []byte(text), 0o644); err != nil {
		return fmt.Errorf("write known hosts %s: %w", path, err)
	}
	return nil
}
