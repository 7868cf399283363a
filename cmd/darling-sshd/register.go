package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	gossh "golang.org/x/crypto/ssh"

	"github.com/darling-sshd/darling-sshd/auth"
	"github.com/darling-sshd/darling-sshd/sshserver"
)

// Where register writes by default: what the root Nix daemon and the
// system ssh read.
const (
	defaultSSHConfigDir    = "/etc/ssh/ssh_config.d"
	defaultSystemSSHConfig = "/etc/ssh/ssh_config"
	defaultUserSSHConfig   = "/root/.ssh/config"
	defaultMachines        = "/etc/nix/machines"
	defaultKnownHosts      = "/etc/ssh/darling-sshd_known_hosts"
)

func registerCmd(fs *flag.FlagSet) action {
	var bf builderFlags
	bf.addSSHFlags(fs, "known-hosts", defaultKnownHosts)
	bf.addMachineFlags(fs)
	d := sshserver.DefaultOptions()
	hostKey := fs.String("host-key", d.HostKeyPath, "the server's host key file (its .pub is read), as serve's --host-key")
	stateDir := fs.String("state-dir", "", "take the listen address, host key, host alias and builder key from the server running with this --state-dir (flags given explicitly win)")
	var p registerPaths
	p.add(fs)
	dryRun := fs.Bool("dry-run", false, "print what would change, change nothing")
	undo := fs.Bool("undo", false, "remove what register wrote (the marked block, lines and file)")
	return func(stdout, stderr io.Writer) int {
		set := map[string]bool{}
		fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
		pub, err := fromServer(*stateDir, set, &bf)
		if err != nil {
			return failed(stderr, "register", err)
		}
		b, err := bf.builder()
		if err != nil {
			return usageError(stderr, "register", err)
		}
		if pub == nil && !*undo {
			if pub, err = auth.LoadPublicHostKey(*hostKey); err != nil {
				return failed(stderr, "register", fmt.Errorf("%w (pass the server's --host-key, or --state-dir of a running server)", err))
			}
		}
		b.PublicHostKey = pub
		if _, err := os.Stat(b.Identity); err != nil && !*undo {
			return failed(stderr, "register", fmt.Errorf("builder key %s: %w; create it with ssh-keygen -t ed25519 -N '' -f %s and give %s.pub to serve's --authorized-keys",
				b.Identity, err, b.Identity, b.Identity))
		}
		r := p.registration(b)
		changes, err := r.Plan(*undo)
		if err != nil {
			return failed(stderr, "register", err)
		}
		for _, c := range changes {
			if *dryRun && c.Changed() {
				fmt.Fprint(stdout, "would ")
			}
			fmt.Fprint(stdout, c.Describe())
		}
		if *dryRun {
			return 0
		}
		if err := auth.Apply(changes); err != nil {
			return failed(stderr, "register", err)
		}
		if !*undo {
			fmt.Fprintf(stdout, "registered %s; now check it as Nix will use it:\n  %s\n", b.Alias, p.checkLine(r, b.Alias))
		}
		return 0
	}
}

// registerPaths are the files register writes; check reads the same ones.
type registerPaths struct {
	sshConfigDir, systemSSHConfig, userSSHConfig, machines *string
}

func (p *registerPaths) add(fs *flag.FlagSet) {
	p.sshConfigDir = fs.String("ssh-config-dir", defaultSSHConfigDir, "folder the system ssh includes; the Host block goes there as darling-sshd-ALIAS.conf")
	p.systemSSHConfig = fs.String("system-ssh-config", defaultSystemSSHConfig, "the system ssh's configuration, read to see whether it includes --ssh-config-dir")
	p.userSSHConfig = fs.String("user-ssh-config", defaultUserSSHConfig, "root's ssh configuration: the Host block goes there, marked, when the system ssh includes no folder")
	p.machines = fs.String("machines", defaultMachines, "Nix's machines file")
}

func (p *registerPaths) registration(b auth.Builder) *auth.Registration {
	return &auth.Registration{Builder: b, SSHConfigDir: *p.sshConfigDir, SystemSSHConfig: *p.systemSSHConfig,
		UserSSHConfig: *p.userSSHConfig, Machines: *p.machines}
}

// checkLine is the check command for what register wrote: the ssh
// configuration ssh reads unless told otherwise needs no flag.
func (p *registerPaths) checkLine(r *auth.Registration, alias string) string {
	line := "darling-sshd check"
	if alias != sshserver.DefaultOptions().HostAlias {
		line += " --host-alias " + alias
	}
	if *p.machines != defaultMachines {
		line += " --machines " + *p.machines
	}
	switch inc, _ := r.SystemIncludes(); {
	case inc && *p.systemSSHConfig != defaultSystemSSHConfig:
		line += " --ssh-config " + *p.systemSSHConfig
	case !inc && *p.userSSHConfig != defaultUserSSHConfig:
		line += " --ssh-config " + *p.userSSHConfig
	}
	return line
}

// fromServer fills the flags not given explicitly from the server running
// with stateDir, and returns its host key; with no stateDir it does
// nothing.
func fromServer(stateDir string, set map[string]bool, bf *builderFlags) (gossh.PublicKey, error) {
	if stateDir == "" {
		return nil, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := sshserver.QueryStatus(ctx, stateDir)
	if err != nil {
		return nil, err
	}
	pub, _, _, _, err := gossh.ParseAuthorizedKey([]byte(st.Server.HostKey))
	if err != nil {
		return nil, fmt.Errorf("the server's host key %q: %w", st.Server.HostKey, err)
	}
	if set["host-key"] {
		return nil, errors.New("--host-key and --state-dir both name the host key; give one")
	}
	if !set["listen"] {
		*bf.listen = st.Server.Listen
	}
	if !set["host-alias"] && st.Server.HostAlias != "" {
		*bf.alias = st.Server.HostAlias
	}
	// The builder key: the private half of the server's authorized
	// key file, when it lies beside it (make run's, a NixOS module's).
	if priv, ok := strings.CutSuffix(st.Server.AuthorizedKeys, ".pub"); ok && !set["identity"] {
		if _, err := os.Stat(priv); err == nil {
			*bf.identity = priv
		}
	}
	return pub, nil
}
