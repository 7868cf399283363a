package integration

import (
	"fmt"
	"os/exec"
	"strconv"
	"testing"
	"time"
)

// TestSessionCannotEndOthers: a session that takes another session's
// marker, and writes a host process's pid into its own cgroup, ends
// without touching either: the other session's process and the host's
// run on.
func TestSessionCannotEndOthers(t *testing.T) {
	s := startServer(t, serverOpt{})
	other, err := s.dialGo(t).NewSession()
	if err != nil {
		t.Fatal(err)
	}
	db := uniqueSleep()
	if err := other.Start("sleep " + db); err != nil {
		t.Fatal(err)
	}
	if !waitFor(time.Minute, func() bool { return len(procsWithArgs("sleep", db)) == 1 }) {
		t.Fatal("the other session's sleep never started")
	}
	host := exec.Command("sleep", uniqueSleep())
	if err := host.Start(); err != nil {
		t.Fatal(err)
	}
	hostDone := make(chan error, 1)
	go func() { hostDone <- host.Wait() }()
	defer func() { host.Process.Kill(); <-hostDone }()

	da := uniqueSleep()
	attack := fmt.Sprintf(`for p in /proc/[0-9]*; do
  [ "$(tr '\0' ' ' < $p/cmdline 2>/dev/null)" = "sleep %[1]s " ] && m=$(tr '\0' '\n' < $p/environ | grep '^DARLING_SSHD_SESSION=')
done
[ -n "$m" ] || { echo "no marker found" >&2; exit 1; }
env "$m" sleep %[2]s &
cg=$(sed -n 's/^0:://p' /proc/self/cgroup)
for f in /sys/fs/cgroup/unified$cg/cgroup.procs /sys/fs/cgroup$cg/cgroup.procs; do echo %[3]d > $f 2>/dev/null; done
echo started; sleep 600`, db, da, host.Process.Pid)
	escapeAndLeave(t, s, attack, da)
	if !waitFor(killGrace+time.Second, func() bool { return len(procsWithArgs("sleep", da)) == 0 }) &&
		s.logged("each session gets a cgroup of its own") {
		t.Error("the attacking session's own process outlived it")
	}
	if len(procsWithArgs("sleep", db)) != 1 {
		t.Error("the other session's process was ended with the attacking session")
	}
	select {
	case err := <-hostDone:
		t.Errorf("the host process %s was ended: %v", strconv.Itoa(host.Process.Pid), err)
	default:
	}
}
