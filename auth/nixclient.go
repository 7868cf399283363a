package auth

import (
	"fmt"
	"strconv"
	"strings"

	gossh "golang.org/x/crypto/ssh"
)

// Builder describes this server as a Nix remote builder, as the host's Nix
// daemon and its ssh should see it.
type Builder struct {
	Alias             string // ssh Host alias and HostKeyAlias, e.g. darling-builder
	Protocol          string // ssh (nix-store --serve) or ssh-ng (nix-daemon --stdio)
	User              string
	Systems           []string
	Identity          string // the builder key's private half
	MaxJobs           int
	SpeedFactor       int
	SupportedFeatures []string
	MandatoryFeatures []string
	PublicHostKey     gossh.PublicKey // nil: "-" in the machines line
	Host, Port        string          // what ssh dials
	KnownHosts        string          // the file the server writes
}

// Ciphers is the client cipher order for the ssh_config block: AES-GCM
// first, because x/crypto's chacha20-poly1305 has no amd64 assembly and the
// client's order decides.
const Ciphers = "aes128-gcm@openssh.com,aes256-gcm@openssh.com,chacha20-poly1305@openssh.com"

// Check reports a Builder that would give a broken line or block.
func (b *Builder) Check() error {
	if b.Protocol != "ssh" && b.Protocol != "ssh-ng" {
		return fmt.Errorf("protocol %q: want ssh or ssh-ng", b.Protocol)
	}
	for _, f := range []struct{ name, v string }{{"host alias", b.Alias}, {"user", b.User}, {"identity", b.Identity}} {
		if f.v == "" || strings.ContainsAny(f.v, " \t\n,#\"") {
			return fmt.Errorf("%s %q: must be non-empty, without spaces, commas, quotes or #", f.name, f.v)
		}
	}
	if len(b.Systems) == 0 {
		return fmt.Errorf("no system")
	}
	if b.MaxJobs < 1 {
		return fmt.Errorf("max jobs %d: must be at least 1", b.MaxJobs)
	}
	if b.SpeedFactor < 1 {
		return fmt.Errorf("speed factor %d: must be at least 1", b.SpeedFactor)
	}
	return nil
}

func listOrDash(l []string) string {
	if len(l) == 0 {
		return "-"
	}
	return strings.Join(l, ",")
}

// MachinesLine is the builder's line for /etc/nix/machines (or
// --builders): URI, systems, key, max jobs, speed factor, supported and
// mandatory features, public host key.
func (b *Builder) MachinesLine() string {
	hostKey := "-"
	if b.PublicHostKey != nil {
		hostKey = PublicHostKeyBase64(b.PublicHostKey)
	}
	return strings.Join([]string{
		b.Protocol + "://" + b.User + "@" + b.Alias,
		listOrDash(b.Systems),
		b.Identity,
		strconv.Itoa(b.MaxJobs),
		strconv.Itoa(b.SpeedFactor),
		listOrDash(b.SupportedFeatures),
		listOrDash(b.MandatoryFeatures),
		hostKey,
	}, " ")
}

// SSHConfig is the matching ssh_config Host block, so that no Nix version
// needs a port in the URI: nix-darwin's linux-builder registers itself so.
func (b *Builder) SSHConfig() string {
	return fmt.Sprintf(`Host %s
  HostName %s
  Port %s
  User %s
  IdentityFile %s
  IdentitiesOnly yes
  HostKeyAlias %s
  UserKnownHostsFile %s
  Ciphers %s
`, b.Alias, b.Host, b.Port, b.User, b.Identity, b.Alias, b.KnownHosts, Ciphers)
}
