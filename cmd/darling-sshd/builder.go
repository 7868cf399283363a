package main

import (
	"flag"
	"fmt"
	"io"

	gossh "golang.org/x/crypto/ssh"

	"github.com/darling-sshd/darling-sshd/auth"
	"github.com/darling-sshd/darling-sshd/sshserver"
)

// defaultIdentity is the Nix daemon's builder key, as the NixOS module
// and register name it.
const defaultIdentity = "/etc/nix/darling-builder-key"

func hostkeyCmd(fs *flag.FlagSet) action {
	path := fs.String("host-key", sshserver.DefaultOptions().HostKeyPath, "ed25519 host key file, generated if missing")
	format := fs.String("format", "openssh", "output: openssh (the public key line) or base64 (Nix's publicHostKey)")
	return func(stdout, stderr io.Writer) int {
		var render func(gossh.PublicKey) string
		switch *format {
		case "openssh":
			render = auth.AuthorizedKeyLine
		case "base64":
			render = auth.PublicHostKeyBase64
		default:
			return flagError(stderr, "hostkey", "format", fmt.Errorf("%q: want openssh or base64", *format))
		}
		signer, err := auth.LoadOrGenerateHostKey(*path)
		if err != nil {
			return failed(stderr, "hostkey", err)
		}
		fmt.Fprintln(stdout, render(signer.PublicKey()))
		return 0
	}
}

// builderFlags are the flags that describe the builder to the host's Nix
// and ssh; each subcommand defines the ones it uses.
type builderFlags struct {
	alias, user, identity, listen, knownHosts *string
	protocol, systems, supported, mandatory   *string
	maxJobs, speed                            *int
}

// addSSHFlags defines the flags the ssh_config block is made of.
func (b *builderFlags) addSSHFlags(fs *flag.FlagSet, knownHostsFlag, knownHostsDefault string) {
	d := sshserver.DefaultOptions()
	b.alias = fs.String("host-alias", d.HostAlias, "ssh Host alias and HostKeyAlias the builder is known by")
	b.user = fs.String("user", "root", "login name")
	b.identity = fs.String("identity", defaultIdentity, "private key the Nix daemon logs in with")
	b.listen = fs.String("listen", d.Listen, "address the server listens on (host:port)")
	b.knownHosts = fs.String(knownHostsFlag, knownHostsDefault, "known_hosts file that trusts the host key under the alias")
}

// addMachineFlags defines the flags the machines line is made of, beyond
// the alias, user and identity.
func (b *builderFlags) addMachineFlags(fs *flag.FlagSet) {
	b.protocol = fs.String("protocol", "ssh", "Nix store protocol: ssh (nix-store --serve) or ssh-ng (nix-daemon --stdio)")
	b.systems = fs.String("systems", "x86_64-darwin", "comma-separated systems the builder builds for")
	b.maxJobs = fs.Int("max-jobs", 4, "builds the builder runs at once")
	b.speed = fs.Int("speed-factor", 1, "speed factor relative to other builders")
	b.supported = fs.String("supported-features", "", "comma-separated supported system features")
	b.mandatory = fs.String("mandatory-features", "", "comma-separated mandatory system features")
}

// builder returns the Builder the defined flags describe.
func (b *builderFlags) builder() (auth.Builder, error) {
	out := auth.Builder{Alias: *b.alias, User: *b.user, Identity: *b.identity, Protocol: "ssh", Systems: []string{"x86_64-darwin"}, MaxJobs: 1, SpeedFactor: 1}
	if b.listen != nil {
		host, port, err := auth.ClientHost(*b.listen)
		if err != nil {
			return out, err
		}
		out.Host, out.Port, out.KnownHosts = host, port, *b.knownHosts
	}
	if b.protocol != nil {
		out.Protocol, out.Systems, out.MaxJobs, out.SpeedFactor = *b.protocol, list(*b.systems), *b.maxJobs, *b.speed
		out.SupportedFeatures, out.MandatoryFeatures = list(*b.supported), list(*b.mandatory)
	}
	return out, out.Check()
}

func sshConfigCmd(fs *flag.FlagSet) action {
	var bf builderFlags
	bf.addSSHFlags(fs, "known-hosts-out", sshserver.DefaultOptions().KnownHostsOut)
	return func(stdout, stderr io.Writer) int {
		b, err := bf.builder()
		if err != nil {
			return usageError(stderr, "ssh-config", err)
		}
		fmt.Fprint(stdout, b.SSHConfig())
		return 0
	}
}

func machinesLineCmd(fs *flag.FlagSet) action {
	var bf builderFlags
	d := sshserver.DefaultOptions()
	bf.alias = fs.String("host-alias", d.HostAlias, "ssh Host alias the builder is known by (the ssh-config block gives its address)")
	bf.user = fs.String("user", "root", "login name")
	bf.identity = fs.String("identity", defaultIdentity, "private key the Nix daemon logs in with")
	bf.addMachineFlags(fs)
	hostKey := fs.String("host-key", d.HostKeyPath, "host key file; publicHostKey comes from its .pub")
	noHostKey := fs.Bool("no-public-host-key", false, "write - for publicHostKey (trust comes from the known hosts file)")
	return func(stdout, stderr io.Writer) int {
		b, err := bf.builder()
		if err != nil {
			return usageError(stderr, "machines-line", err)
		}
		if !*noHostKey {
			pub, err := auth.LoadPublicHostKey(*hostKey)
			if err != nil {
				return failed(stderr, "machines-line", fmt.Errorf("%w (run serve or hostkey first, or pass --no-public-host-key)", err))
			}
			b.PublicHostKey = pub
		}
		fmt.Fprintln(stdout, b.MachinesLine())
		return 0
	}
}
