package auth

import (
	"fmt"
	"net"
	"net/netip"
	"path"
	"strings"
	"time"
)

// KeyOptions are the options of an authorized_keys line (sshd(8), AUTHORIZED_KEYS
// FILE FORMAT) that this server enforces. Every option on a line is parsed;
// a line with one the server does not know is rejected, as OpenSSH rejects
// it (fail closed).
type KeyOptions struct {
	// Command, if set, is run instead of whatever the client asked for
	// (exec, shell or subsystem), with SSH_ORIGINAL_COMMAND set.
	Command *string
	// From, if set, lists the patterns the client's address must match.
	From []string
	// Environment holds NAME=value pairs set for the session.
	Environment []string
	// Expiry, if not zero, is when the key stops being accepted.
	Expiry time.Time
	// NoPty refuses a terminal (no-pty, or restrict without pty).
	NoPty bool
	// NoTouchRequired accepts security key signatures made without a touch.
	NoTouchRequired bool
}

// ParseOptions parses the options of an authorized_keys line.
func ParseOptions(opts []string) (KeyOptions, error) {
	var o KeyOptions
	restrict, pty := false, false
	for _, opt := range opts {
		name, value, hasValue := strings.Cut(opt, "=")
		name = strings.ToLower(name)
		if hasValue {
			var err error
			if value, err = unquoteOption(value); err != nil {
				return o, fmt.Errorf("option %s: %w", name, err)
			}
		}
		switch name {
		case "restrict":
			restrict = true
		case "pty":
			pty = true
		default:
			if err := o.apply(name, value, hasValue); err != nil {
				return o, err
			}
		}
	}
	// restrict and pty may come in either order: only the whole line says
	// whether a terminal is allowed.
	if restrict && !pty {
		o.NoPty = true
	}
	return o, nil
}

// apply records one option other than restrict and pty; value is already
// unquoted, and hasValue tells an empty value from none.
func (o *KeyOptions) apply(name, value string, hasValue bool) error {
	switch name {
	case "no-pty":
		o.NoPty = true
	case "no-touch-required":
		o.NoTouchRequired = true
	case "no-port-forwarding", "no-agent-forwarding", "no-x11-forwarding", "no-user-rc",
		"port-forwarding", "agent-forwarding", "x11-forwarding", "user-rc":
		// This server never forwards ports, agents or X11 and runs no
		// user rc: forbidding them changes nothing, and permitting them
		// grants nothing.
	case "permitopen", "permitlisten", "command", "from", "environment", "expiry-time":
		if !hasValue {
			return fmt.Errorf("option %s needs a value", name)
		}
		return o.applyValue(name, value)
	case "verify-required":
		return fmt.Errorf("option verify-required is not supported (security key PIN verification)")
	default:
		return fmt.Errorf("option %q is not supported", name)
	}
	return nil
}

// applyValue records one of the options that take a value.
func (o *KeyOptions) applyValue(name, value string) error {
	switch name {
	case "command":
		if o.Command != nil {
			return fmt.Errorf("option command given twice")
		}
		o.Command = &value
	case "from":
		for _, p := range strings.Split(value, ",") {
			if err := checkFromPattern(p); err != nil {
				return fmt.Errorf("option from: %w", err)
			}
			o.From = append(o.From, p)
		}
	case "environment":
		n, _, ok := strings.Cut(value, "=")
		if !ok || !ValidEnvName(n) {
			return fmt.Errorf("option environment: %q is not NAME=value", value)
		}
		o.Environment = append(o.Environment, value)
	case "expiry-time":
		t, err := parseExpiry(value)
		if err != nil {
			return fmt.Errorf("option expiry-time: %w", err)
		}
		// Given more than once, the earliest wins.
		if o.Expiry.IsZero() || t.Before(o.Expiry) {
			o.Expiry = t
		}
	}
	// permitopen and permitlisten need a value and grant nothing: this
	// server forwards nothing.
	return nil
}

// unquoteOption undoes an option value's double quotes; inside them, \"
// stands for a quote.
func unquoteOption(v string) (string, error) {
	if len(v) < 2 || v[0] != '"' || v[len(v)-1] != '"' {
		return "", fmt.Errorf("value %q is not in double quotes", v)
	}
	return strings.ReplaceAll(v[1:len(v)-1], `\"`, `"`), nil
}

// ValidEnvName reports whether name is an environment variable name this
// project accepts: [A-Za-z0-9_] only.
func ValidEnvName(name string) bool {
	if name == "" {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !(c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}

// parseExpiry reads YYYYMMDD[HHMM[SS]], local time as sshd reads it.
func parseExpiry(v string) (time.Time, error) {
	layouts := map[int]string{8: "20060102", 12: "200601021504", 14: "20060102150405"}
	layout, ok := layouts[len(v)]
	if !ok {
		return time.Time{}, fmt.Errorf("%q: want YYYYMMDD[HHMM[SS]]", v)
	}
	return time.ParseInLocation(layout, v, time.Local)
}

// checkFromPattern checks one from= pattern: an optional '!', then a CIDR
// block or an address or host pattern with * and ?.
func checkFromPattern(p string) error {
	p = strings.TrimPrefix(p, "!")
	if p == "" {
		return fmt.Errorf("empty pattern")
	}
	if strings.Contains(p, "/") {
		if _, err := netip.ParsePrefix(p); err != nil {
			return fmt.Errorf("%q: %w", p, err)
		}
		return nil
	}
	if _, err := path.Match(p, ""); err != nil || strings.ContainsAny(p, "[]") {
		return fmt.Errorf("%q: bad pattern", p)
	}
	return nil
}

// FromAllows reports whether the client address addr matches the from=
// patterns: a negated match refuses, otherwise any match allows. Names are
// not looked up (as sshd with UseDNS no): patterns match the address.
func (o *KeyOptions) FromAllows(addr net.Addr) bool {
	if len(o.From) == 0 {
		return true
	}
	host, _, err := net.SplitHostPort(addr.String())
	if err != nil {
		return false
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return false
	}
	ip = ip.Unmap()
	allowed := false
	for _, p := range o.From {
		neg := strings.HasPrefix(p, "!")
		p = strings.TrimPrefix(p, "!")
		var match bool
		if strings.Contains(p, "/") {
			pre, err := netip.ParsePrefix(p)
			match = err == nil && pre.Contains(ip)
		} else {
			match, _ = path.Match(p, ip.String())
		}
		if match && neg {
			return false
		}
		allowed = allowed || match
	}
	return allowed
}

// Expired reports whether the key's expiry-time has passed at now.
func (o *KeyOptions) Expired(now time.Time) bool {
	return !o.Expiry.IsZero() && now.After(o.Expiry)
}
