package darlingexec

import (
	"errors"
	"fmt"
	"slices"

	"golang.org/x/sys/unix"
)

// Signal delivers a client's "signal" request (an RFC 4254 name, without
// "SIG") to the session's processes in the container. It does not go
// through the launcher: Darling forwards signals to the command's process
// group, which a command started in pipe mode is not in, so they are lost.
func (p *Process) Signal(name string) error {
	sig := unix.SignalNum("SIG" + name)
	if sig == 0 || signalName(sig) != name {
		return fmt.Errorf("signal %q is not one RFC 4254 names", name)
	}
	select {
	case <-p.done:
		return errors.New("the command has exited")
	default:
	}
	// The cgroup's too: a session it holds whole is no longer followed
	// by the tracker, and a process that left its tree and cleared its
	// environment is found only there.
	pids := slices.DeleteFunc(p.procs.withCgroup(p.l.tracker.scan(p.procs)), func(pid int) bool { return pid == p.Pid() })
	if len(pids) == 0 {
		return errors.New("no process of the session is running")
	}
	p.procs.signal(pids, sig)
	return nil
}
