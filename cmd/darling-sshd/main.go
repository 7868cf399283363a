// Command darling-sshd is an SSH server that runs every session inside a
// Darling prefix, so a Linux machine can serve as a Nix remote builder for
// x86_64-darwin. This package holds subcommands and flags only: each file
// is one subcommand's flags and the call that does its work.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"strings"
)

// action runs a subcommand once its flags are parsed; it returns the exit
// status.
type action func(stdout, stderr io.Writer) int

// command is one subcommand: setup defines its flags, and only those it
// uses, and returns what runs with them.
type command struct {
	name, summary string
	setup         func(fs *flag.FlagSet) action
}

// commands lists the subcommands in the order usage shows them.
func commands() []command {
	return []command{
		{"serve", "serve SSH sessions inside the Darling prefix", serveCmd},
		{"init", "prepare the prefix for Nix (nix.conf, /var/empty, optionally a shared store)", initCmd},
		{"register", "make the local Nix daemon use the builder (ssh config, known_hosts, /etc/nix/machines)", registerCmd},
		{"check", "connect as Nix does, through the registered ssh config, and speak both of Nix's protocols", checkCmd},
		{"status", "show a running server's sessions, container and counters", statusCmd},
		{"hostkey", "print the host key's public line (generating the key if missing)", hostkeyCmd},
		{"machines-line", "print the builder's /etc/nix/machines line", machinesLineCmd},
		{"ssh-config", "print the ssh_config Host block Nix's ssh needs to reach the builder", sshConfigCmd},
	}
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage())
		return 2
	}
	switch args[0] {
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stdout, usage())
		return 0
	case "-version", "--version", "version":
		fmt.Fprintln(stdout, version())
		return 0
	}
	for _, c := range commands() {
		if c.name == args[0] {
			return c.run(args[1:], stdout, stderr)
		}
	}
	fmt.Fprintf(stderr, "darling-sshd: unknown command %q; see darling-sshd -h\n", args[0])
	return 2
}

// usage is the top-level help: the subcommands, one line each.
func usage() string {
	var b strings.Builder
	b.WriteString("usage: darling-sshd <command> [flags]\n\ncommands:\n")
	for _, c := range commands() {
		fmt.Fprintf(&b, "  %-14s %s\n", c.name, c.summary)
	}
	b.WriteString("\nRun \"darling-sshd <command> -h\" for a command's flags; --version on any prints the version.\n")
	return b.String()
}

// run parses the subcommand's flags and runs it. A usage error is one
// line naming the flag and ending with where the flags are listed; -h
// prints the flags to stdout; --version prints the version.
func (c command) run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet(c.name, flag.ContinueOnError)
	act := c.setup(fs)
	showVersion := fs.Bool("version", false, "print the version and exit")
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	err := fs.Parse(args)
	switch {
	case errors.Is(err, flag.ErrHelp):
		fmt.Fprint(stdout, c.help(fs))
		return 0
	case err != nil:
		return usageError(stderr, c.name, err)
	case fs.NArg() > 0:
		return usageError(stderr, c.name, fmt.Errorf("unexpected argument %q", fs.Arg(0)))
	case *showVersion:
		fmt.Fprintln(stdout, version())
		return 0
	}
	return act(stdout, stderr)
}

// help is a subcommand's -h text: what it does and its flags.
func (c command) help(fs *flag.FlagSet) string {
	var b strings.Builder
	fmt.Fprintf(&b, "usage: darling-sshd %s [flags]\n\n%s.\n\nflags:\n", c.name, c.summary)
	fs.SetOutput(&b)
	fs.PrintDefaults()
	fs.SetOutput(io.Discard)
	return b.String()
}

// usageError prints one line saying what is wrong and where the flags are
// listed, and returns exit status 2.
func usageError(stderr io.Writer, cmd string, err error) int {
	fmt.Fprintf(stderr, "darling-sshd %s: %v; see darling-sshd %s -h\n", cmd, err, cmd)
	return 2
}

// flagError is usageError for a flag whose value is wrong.
func flagError(stderr io.Writer, cmd, flagName string, err error) int {
	return usageError(stderr, cmd, fmt.Errorf("invalid value for flag --%s: %w", flagName, err))
}

// failed prints a subcommand's error and returns exit status 1.
func failed(stderr io.Writer, cmd string, err error) int {
	fmt.Fprintf(stderr, "darling-sshd %s: %v\n", cmd, err)
	return 1
}

// version is the module's version and the commit it was built from, as
// the Go toolchain recorded them.
func version() string {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "darling-sshd (unknown version)"
	}
	v := "darling-sshd " + info.Main.Version
	var rev, modified string
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			if s.Value == "true" {
				modified = "+modified"
			}
		}
	}
	if rev != "" {
		v += " " + rev[:min(12, len(rev))] + modified
	}
	return v + " " + info.GoVersion
}

// list splits a comma-separated flag value, dropping empty items.
func list(s string) []string {
	var out []string
	for _, v := range strings.Split(s, ",") {
		if v = strings.TrimSpace(v); v != "" {
			out = append(out, v)
		}
	}
	return out
}
