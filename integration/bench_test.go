//go:build bench

package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/darling-sshd/darling-sshd/auth"
)

// Run with `make bench OUT=dir` (never in make test): the same workloads
// against darling-sshd and against OpenSSH's sshd started here with a
// ForceCommand through the same stand-in launcher, with the same client
// and cipher. It prints one table and writes the raw numbers as JSON.

// benchServer is one side of the comparison.
type benchServer struct {
	name string
	ssh  []string // ssh arguments up to the host
	// nixURL and nixOpts reach the server from Nix (NIX_SSHOPTS).
	nixURL, nixOpts string
	rss             func() int // KiB
	// usage starts counting the CPU time and write system calls the
	// server spends on the connections that follow; the function it
	// returns gives them.
	usage func() func() (cpu, writes float64)
}

// transferStats are one server's numbers for one transfer workload.
type transferStats struct {
	rate        []float64 // MB/s per run
	cpu, writes float64   // server CPU seconds and write calls, per run (= per GiB)
}

// syscw is a process's write system calls so far.
func syscw(pid int) float64 {
	b, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/io")
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "syscw: "); ok {
			n, _ := strconv.ParseFloat(v, 64)
			return n
		}
	}
	return 0
}

// startBusy starts n processes that spin, each pinned to one core, and
// returns what stops them.
func startBusy(t *testing.T, n int) func() {
	var cmds []*exec.Cmd
	for i := range n {
		c := exec.Command("taskset", "-c", strconv.Itoa(i%runtime.NumCPU()), "sh", "-c", "while :; do :; done")
		// Each in a session of its own, as Nix starts each build; out
		// of the test's process group, so killed with the test process.
		c.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Pdeathsig: syscall.SIGKILL}
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		cmds = append(cmds, c)
	}
	return func() {
		for _, c := range cmds {
			c.Process.Kill()
			c.Wait()
		}
	}
}

// descendantsOf lists pid's live descendants.
func descendantsOf(pid int) []int {
	var all []int
	for _, c := range childrenOf(pid) {
		all = append(append(all, c), descendantsOf(c)...)
	}
	return all
}

func procCPU(pid int, children bool) float64 {
	b, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 || i+2 >= len(b) {
		return 0 // gone
	}
	f := strings.Fields(string(b)[i+2:])
	sum := 0.0
	fields := []int{11, 12} // utime, stime
	if children {
		fields = append(fields, 13, 14) // cutime, cstime
	}
	for _, k := range fields {
		v, _ := strconv.ParseFloat(f[k], 64)
		sum += v
	}
	return sum / 100 // clock ticks
}

func rssOf(pids ...int) int {
	total := 0
	for _, pid := range pids {
		b, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
				n, _ := strconv.Atoi(strings.Fields(v)[0])
				total += n
			}
		}
	}
	return total
}

// oursOf is the bench's view of a darling-sshd started by the harness.
func oursOf(s *server, name string) *benchServer {
	pid := s.cmd.Process.Pid
	return &benchServer{name: name, ssh: []string{"-F", s.sshConfig, "dut"},
		nixURL: "ssh://dut", nixOpts: "-F " + s.sshConfig,
		rss: func() int { return rssOf(pid) },
		usage: func() func() (float64, float64) {
			c0, w0 := procCPU(pid, false), syscw(pid)
			return func() (float64, float64) { return procCPU(pid, false) - c0, syscw(pid) - w0 }
		}}
}

// startOpenSSH starts sshd with a ForceCommand through launcher into the
// prefix of s.
func startOpenSSH(t *testing.T, s *server, launcher string) (*benchServer, func()) {
	dir := filepath.Join(s.dir, "openssh")
	os.MkdirAll(dir, 0o700)
	os.MkdirAll("/run/sshd", 0o755)
	run(t, "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", filepath.Join(dir, "hk"))
	pub, _ := os.ReadFile(s.clientKey + ".pub")
	os.WriteFile(filepath.Join(dir, "authorized_keys"), pub, 0o600)
	port := freePort(t)
	cfg := fmt.Sprintf(`Port %s
ListenAddress 127.0.0.1
HostKey %s/hk
PidFile %s/sshd.pid
AuthorizedKeysFile %s/authorized_keys
StrictModes no
UsePAM no
UseDNS no
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin yes
KexAlgorithms curve25519-sha256,curve25519-sha256@libssh.org
MaxStartups 200:30:300
ForceCommand exec env HOME=/root DPREFIX=%s %s shell /bin/sh -c "$SSH_ORIGINAL_COMMAND"
`, port, dir, dir, dir, s.prefix, launcher)
	os.WriteFile(filepath.Join(dir, "sshd_config"), []byte(cfg), 0o600)
	// sshd runs the ForceCommand through root's login shell (bash -c),
	// which reads its startup files for a command that came over ssh
	// (Debian's bash sources /etc/bash.bashrc and ~/.bashrc then), and
	// sshd itself runs ~/.ssh/rc or /etc/ssh/sshrc: none of that is
	// sshd's cost, and on these machines root's .bashrc takes 0.7 s. So
	// sshd runs in a mount namespace where each of those files is empty.
	mask := `for f in /etc/bash.bashrc /etc/profile /root/.bashrc /root/.profile /root/.bash_profile /root/.bash_login /root/.ssh/rc /etc/ssh/sshrc /root/.ssh/environment; do
  if [ -e "$f" ]; then mount --bind /dev/null "$f" || exit 1; fi
done
exec /usr/sbin/sshd -D -e -f "$1"`
	cmd := exec.Command("unshare", "--mount", "--propagation", "private", "sh", "-c", mask, "sh", filepath.Join(dir, "sshd_config"))
	var sshdLog syncBuffer
	cmd.Stdout, cmd.Stderr = &sshdLog, &sshdLog
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	if !waitFor(time.Minute, func() bool {
		return exec.Command("ssh", "-F", "/dev/null", "-p", port, "-i", s.clientKey, "-o", "BatchMode=yes",
			"-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
			"root@127.0.0.1", "true").Run() == nil
	}) {
		t.Fatalf("sshd never answered:\n%s", sshdLog.String())
	}
	pid := cmd.Process.Pid
	opts := []string{"-F", "/dev/null", "-p", port, "-i", s.clientKey, "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
		"-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"}
	b := &benchServer{
		name:    "openssh",
		ssh:     append(opts, "root@127.0.0.1"),
		nixURL:  "ssh://root@127.0.0.1",
		nixOpts: strings.Join(opts, " "),
		// sshd's per-connection processes are reaped by the listener: their
		// time is in its children's time (with the launcher's, which is
		// small: the command runs in the container, not below sshd).
		// sshd works in two processes per connection, which exit with
		// the transfer and are reaped some time later: their CPU time
		// and writes are polled while they live (the last 20 ms can be
		// missed, well under 1%).
		usage: func() func() (float64, float64) {
			seen := map[int][2]float64{}
			done, stopped := make(chan struct{}), make(chan struct{})
			go func() {
				defer close(stopped)
				for {
					for _, p := range procsMatching(func(cl string) bool { return strings.HasPrefix(cl, "sshd: root") }) {
						if c := procCPU(p, false); c > 0 || syscw(p) > 0 {
							seen[p] = [2]float64{c, syscw(p)}
						}
					}
					select {
					case <-done:
						return
					case <-time.After(20 * time.Millisecond):
					}
				}
			}()
			return func() (cpu, writes float64) {
				close(done)
				<-stopped
				for _, u := range seen {
					cpu += u[0]
					writes += u[1]
				}
				return cpu, writes
			}
		},
		rss: func() int {
			return rssOf(append([]int{pid}, procsMatching(func(cl string) bool { return strings.HasPrefix(cl, "sshd:") })...)...)
		},
	}
	return b, func() {
		// sshd's sessions outlive a killed listener: its per-connection
		// processes and the launchers they started are found first, as
		// its descendants (not every sshd on the machine: another
		// instance may still be measured).
		procs := descendantsOf(cmd.Process.Pid)
		cmd.Process.Kill()
		cmd.Wait()
		for _, p := range procs {
			killPid(p)
		}
	}
}

func freePort(t *testing.T) string {
	return strings.TrimPrefix(freeAddr(t), "127.0.0.1:")
}

type stat struct{ Median, Min, Max float64 }

func summarize(xs []float64) stat {
	s := slices.Clone(xs)
	slices.Sort(s)
	return stat{s[len(s)/2], s[0], s[len(s)-1]}
}

func timeRun(t *testing.T, name string, args []string, stdin string) float64 {
	t.Helper()
	cmd := exec.Command("sh", "-c", stdin+` "$@"`, "sh")
	cmd.Args = append(cmd.Args, append([]string{name}, args...)...)
	start := time.Now()
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s %v: %v %s", name, args, err, out)
	}
	return time.Since(start).Seconds()
}

func TestBench(t *testing.T) {
	const gib = 1 << 30
	s := startServer(t, serverOpt{ownSession: true})
	ours := oursOf(s, "darling-sshd")
	openssh, stop := startOpenSSH(t, s, bins.standin)
	defer stop()
	results := map[string]map[string]any{"darling-sshd": {}, "openssh": {}}
	var rows [][3]string
	// BENCH_ROWS, a regular expression, runs only the rows it matches
	// (the session start rows always run: transfers need their time).
	only := regexp.MustCompile(os.Getenv("BENCH_ROWS"))
	want := func(name string) bool { return only.MatchString(name) || strings.Contains(name, "`ssh host true`") }
	// rowOf is a row for a and b; row compares ours with openssh.
	rowOf := func(name string, a, b *benchServer, f func(b *benchServer) (float64, string)) {
		if !want(name) {
			return
		}
		var vals [2]float64
		var texts [2]string
		for i, b := range []*benchServer{a, b} {
			if results[b.name] == nil {
				results[b.name] = map[string]any{}
			}
			vals[i], texts[i] = f(b)
			results[b.name][name] = vals[i]
		}
		ratio := ""
		if vals[1] != 0 {
			ratio = fmt.Sprintf("%.2fx", vals[0]/vals[1])
		}
		rows = append(rows, [3]string{name, texts[0] + " | " + texts[1], ratio})
		t.Logf("%-44s %-40s %s", name, texts[0]+" | "+texts[1], ratio)
	}
	row := func(name string, f func(b *benchServer) (float64, string)) { rowOf(name, ours, openssh, f) }
	sshArgs := func(b *benchServer, extra ...string) []string {
		return append(append(append([]string{}, extra...), "-o", "KexAlgorithms=curve25519-sha256"), b.ssh...)
	}
	trueTime := map[string]float64{}
	// memIdle is the server's resident memory.
	memIdle := func(b *benchServer) (float64, string) {
		m := b.rss()
		return float64(m), strconv.Itoa(m)
	}
	// memSessions is the memory 100 idle sessions add, per session.
	memSessions := func(b *benchServer) (float64, string) {
		// One session first: what the first session loads once (code
		// pages, the runtime's first structures; 650 KiB of file pages
		// alone for darling-sshd) is not a cost of each session. The
		// row above is the fresh server's.
		timeRun(t, "ssh", append(sshArgs(b), "true"), "")
		before := b.rss()
		ctx, cancel := context.WithCancel(context.Background())
		var cmds []*exec.Cmd
		// An odd duration marks this run's commands among the processes.
		idle := []string{"sleep", "600.25"}
		base := len(procsWithArgs(idle...))
		defer func() {
			cancel()
			for _, c := range cmds {
				c.Wait()
			}
			// Commands that outlive their client (under sshd) are not
			// left to sleep for ten minutes.
			for _, p := range procsWithArgs(idle...) {
				killPid(p)
			}
		}()
		// Ten logins at a time, each ten waited for until their commands
		// run: a storm of 100 at once takes sshd minutes (a process per
		// login) and measures the storm, not idle sessions.
		started := func() int { return len(procsWithArgs(idle...)) - base }
		for len(cmds) < 100 {
			for range 10 {
				c := exec.CommandContext(ctx, "ssh", append(sshArgs(b), strings.Join(idle, " "))...)
				c.Start()
				cmds = append(cmds, c)
			}
			if !waitFor(60*time.Second, func() bool { return started() >= len(cmds) }) {
				break
			}
		}
		n := started()
		if n <= 0 {
			t.Errorf("%s: no idle session started", b.name)
			return 0, "none started"
		}
		per := float64(b.rss()-before) / float64(n)
		note := ""
		if n < 100 {
			t.Errorf("%s: only %d of 100 idle sessions started", b.name, n)
			note = fmt.Sprintf(" (only %d started)", n)
		}
		return per, fmt.Sprintf("%.0f%s", per, note)
	}
	// Memory is measured on the fresh servers, and idle memory again after
	// the workloads. Sessions are not measured then: whether a collection
	// runs while they log in decides the figure, which came out negative.
	row("memory idle, fresh server (KiB)", memIdle)
	row("memory per idle session, 100 open, fresh server (KiB)", memSessions)
	row("fresh `ssh host true` (s, median of 50)", func(b *benchServer) (float64, string) {
		var xs []float64
		for range 50 {
			xs = append(xs, timeRun(t, "ssh", append(sshArgs(b), "true"), ""))
		}
		st := summarize(xs)
		trueTime[b.name] = st.Median
		return st.Median, fmt.Sprintf("%.3f", st.Median)
	})
	var launcher []float64
	for range 50 {
		launcher = append(launcher, timeRun(t, "env", []string{"DPREFIX=" + s.prefix, bins.standin, "shell", "/bin/sh", "-c", "true"}, ""))
	}
	lt := summarize(launcher).Median
	row("the launcher alone, `darling shell /bin/sh -c true` (s, median of 50; the same for both)", func(*benchServer) (float64, string) {
		return lt, fmt.Sprintf("%.3f", lt)
	})
	row("time added beyond the launcher (s)", func(b *benchServer) (float64, string) {
		return trueTime[b.name] - lt, fmt.Sprintf("%.3f", trueTime[b.name]-lt)
	})
	row("ControlMaster `ssh host true` (s, median of 50)", func(b *benchServer) (float64, string) {
		sock := filepath.Join(s.dir, "cm-"+b.name)
		master := exec.Command("ssh", sshArgs(b, "-o", "ControlMaster=yes", "-o", "ControlPath="+sock, "-N")...)
		master.Start()
		defer func() { master.Process.Kill(); master.Wait() }()
		waitFor(time.Minute, func() bool { _, err := os.Stat(sock); return err == nil })
		var xs []float64
		for range 50 {
			xs = append(xs, timeRun(t, "ssh", append(sshArgs(b, "-o", "ControlPath="+sock), "true"), ""))
		}
		st := summarize(xs)
		return st.Median, fmt.Sprintf("%.3f", st.Median)
	})
	// Session start with the pool of launchers (--prespawn, on by
	// default) and without, with the stand-in as it is and with a launcher
	// 200 ms slower (a wrapper that sleeps, then execs the stand-in: a real
	// Darling start costs far more than the stand-in's), against sshd with
	// the same launcher. Over ControlMaster, sessions come one at a time,
	// each after the launcher's own time twice over, so that the pool has
	// refilled: the case of a builder whose builds do not all start at
	// once. A fresh connection adds the handshake.
	slow := filepath.Join(s.dir, "slow-launcher")
	os.WriteFile(slow, []byte("#!/bin/sh\nsleep 0.2\nexec "+bins.standin+" \"$@\"\n"), 0o755)
	for _, lc := range []struct{ name, path string }{{"stand-in", bins.standin}, {"stand-in + 200 ms", slow}} {
		name := "session start, launcher " + lc.name
		if !want(name) {
			continue
		}
		pooled := oursOf(startServer(t, serverOpt{args: []string{"--darling", lc.path, "--prespawn", "2"}, ownSession: true}), "darling-sshd, pool of 2")
		unpooledServer := startServer(t, serverOpt{args: []string{"--darling", lc.path, "--prespawn", "0"}, ownSession: true})
		unpooled := oursOf(unpooledServer, "darling-sshd, --prespawn 0")
		sshd, stopSSHD := startOpenSSH(t, unpooledServer, lc.path)
		var xs []float64
		for range 20 {
			xs = append(xs, timeRun(t, "env", []string{"DPREFIX=" + unpooledServer.prefix, lc.path, "shell", "/bin/sh", "-c", "true"}, ""))
		}
		own := summarize(xs).Median
		t.Logf("%s: the launcher alone %.3f s", name, own)
		paced := func(b *benchServer) (float64, string) {
			sock := filepath.Join(s.dir, "cmp-"+strconv.Itoa(len(rows)))
			master := exec.Command("ssh", sshArgs(b, "-o", "ControlMaster=yes", "-o", "ControlPath="+sock, "-N")...)
			master.Start()
			defer func() { master.Process.Kill(); master.Wait() }()
			waitFor(time.Minute, func() bool { _, err := os.Stat(sock); return err == nil })
			var xs []float64
			for range 20 {
				time.Sleep(time.Duration(2*own*float64(time.Second)) + 50*time.Millisecond)
				xs = append(xs, timeRun(t, "ssh", append(sshArgs(b, "-o", "ControlPath="+sock), "true"), ""))
			}
			st := summarize(xs)
			return st.Median, fmt.Sprintf("%.3f (%.2fx the launcher's %.3f)", st.Median, st.Median/own, own)
		}
		fresh := func(b *benchServer) (float64, string) {
			var xs []float64
			for range 20 {
				time.Sleep(time.Duration(2*own*float64(time.Second)) + 50*time.Millisecond)
				xs = append(xs, timeRun(t, "ssh", append(sshArgs(b), "true"), ""))
			}
			st := summarize(xs)
			return st.Median, fmt.Sprintf("%.3f", st.Median)
		}
		for _, b := range []*benchServer{pooled, unpooled} {
			rowOf(fmt.Sprintf("%s: ControlMaster `ssh host true`, one at a time (s, median of 20), %s", name, b.name), b, sshd, paced)
			rowOf(fmt.Sprintf("%s: fresh `ssh host true`, one at a time (s, median of 20), %s", name, b.name), b, sshd, fresh)
		}
		stopSSHD()
	}
	// Transfers alternate between the servers, run by run, so that both
	// see the same machine; contended ones run with one busy process
	// pinned to each core, as on a builder that compiles while it
	// transfers. Server writes per GiB tell the packets the client gets.
	transfers := func(cipher, dir string, busy int) map[string]*transferStats {
		stop := startBusy(t, busy)
		defer stop()
		stats := map[string]*transferStats{}
		for range 5 {
			for _, b := range []*benchServer{ours, openssh} {
				st := stats[b.name]
				if st == nil {
					st = &transferStats{}
					stats[b.name] = st
				}
				used := b.usage()
				var sec float64
				if dir == "download" {
					sec = timeRun(t, "ssh", append(sshArgs(b, "-c", cipher), "head -c 1073741824 /dev/zero"), "exec >/dev/null;")
				} else {
					sec = timeRun(t, "ssh", append(sshArgs(b, "-c", cipher), "cat > /dev/null"), "head -c 1073741824 /dev/zero |")
				}
				st.rate = append(st.rate, gib/1e6/(sec-trueTime[b.name]))
				cpu, writes := used()
				st.cpu += cpu / 5
				st.writes += writes / 5
			}
		}
		return stats
	}
	for _, tc := range []struct {
		cipher string
		busy   int
	}{{"aes128-gcm@openssh.com", 0}, {"chacha20-poly1305@openssh.com", 0}, {"aes128-gcm@openssh.com", runtime.NumCPU()}} {
		for _, dir := range []string{"download", "upload"} {
			load := ""
			if tc.busy > 0 {
				load = fmt.Sprintf(", %d busy processes pinned to the cores", tc.busy)
			}
			name := fmt.Sprintf("%s %s 1 GiB%s", dir, strings.Split(tc.cipher, "@")[0], load)
			if !want(name + " (MB/s, median of 5)") {
				continue
			}
			stats := transfers(tc.cipher, dir, tc.busy)
			row(name+" (MB/s, median of 5)", func(b *benchServer) (float64, string) {
				st := summarize(stats[b.name].rate)
				return st.Median, fmt.Sprintf("%.0f (%.0f-%.0f)", st.Median, st.Min, st.Max)
			})
			row("server CPU s/GiB, "+name, func(b *benchServer) (float64, string) {
				return stats[b.name].cpu, fmt.Sprintf("%.2f", stats[b.name].cpu)
			})
			row("server writes per GiB, "+name, func(b *benchServer) (float64, string) {
				return stats[b.name].writes, fmt.Sprintf("%.0f", stats[b.name].writes)
			})
		}
	}
	row("32 sessions x 64 MiB at once (s)", func(b *benchServer) (float64, string) {
		var wg sync.WaitGroup
		start := time.Now()
		for range 32 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				exec.Command("ssh", append(sshArgs(b, "-c", "aes128-gcm@openssh.com"), "head -c 67108864 /dev/zero")...).Run()
			}()
		}
		wg.Wait()
		sec := time.Since(start).Seconds()
		return sec, fmt.Sprintf("%.2f", sec)
	})
	// nix copy --to of a 256 MiB store path, a fresh one each time (under
	// sshd a path once copied stays alive on the builder, so it cannot be
	// deleted between runs), with the ssh-config block's cipher order and
	// with the client's default order (chacha20-poly1305 first).
	c := setupNix(t, s)
	seed := byte(0)
	freshPath := func() string {
		seed++
		payload := filepath.Join(c.dir, "payload-"+strconv.Itoa(int(seed)))
		os.MkdirAll(payload, 0o755)
		f, _ := os.Create(filepath.Join(payload, "big"))
		io.Copy(f, io.LimitReader(rand.NewChaCha8([32]byte{seed}), 256<<20))
		f.Close()
		return strings.TrimSpace(c.run("nix-store", "--store", c.store, "--add", payload))
	}
	leftovers := map[string]int{}
	defer func() { t.Logf("nix-store --serve processes left running after nix copy: %v", leftovers) }()
	for _, v := range []struct{ name, ciphers string }{
		{"ssh-config ciphers (AES-GCM first)", auth.Ciphers},
		{"client default ciphers", "chacha20-poly1305@openssh.com,aes128-ctr,aes192-ctr,aes256-ctr,aes128-gcm@openssh.com,aes256-gcm@openssh.com"},
	} {
		row("nix copy --to 256 MiB, "+v.name+" (s less one session's start, median of 5)", func(b *benchServer) (float64, string) {
			var xs []float64
			for range 5 {
				path := freshPath()
				cmd := c.cmd(context.Background(), "nix", "copy", "--no-check-sigs", "--store", c.store, "--to", b.nixURL, path)
				cmd.Env = append(cmd.Env, "NIX_SSHOPTS="+b.nixOpts+" -o KexAlgorithms=curve25519-sha256 -o Ciphers="+v.ciphers)
				start := time.Now()
				if out, err := cmd.CombinedOutput(); err != nil {
					// Through sshd's ForceCommand, what the prefix's login
					// profile prints reaches stdout ahead of Nix's protocol
					// (the stand-in prints a line there, as Darling's
					// path_helper does): that is a result, not a bench
					// failure.
					if b != ours && strings.Contains(string(out), "protocol mismatch") {
						return 0, "fails: startup output on stdout breaks Nix's protocol"
					}
					t.Fatalf("nix copy to %s: %v\n%s", b.name, err, out)
				}
				// One session: its start is taken off, as for the transfers.
				xs = append(xs, time.Since(start).Seconds()-trueTime[b.name])
				// A remote nix-store --serve that outlives the copy is
				// counted and killed.
				left := procsMatching(func(cl string) bool {
					return strings.Contains(cl, "nix-store") && strings.Contains(cl, "--serve")
				})
				for _, p := range left {
					killPid(p)
				}
				leftovers[b.name] += len(left)
			}
			st := summarize(xs)
			return st.Median, fmt.Sprintf("%.2f (%.2f-%.2f)", st.Median, st.Min, st.Max)
		})
	}
	row("memory idle, after the workloads (KiB)", memIdle)
	var b strings.Builder
	fmt.Fprintf(&b, "| workload | darling-sshd \\| OpenSSH sshd | ratio |\n|---|---|---|\n")
	for _, r := range rows {
		fmt.Fprintf(&b, "| %s | %s | %s |\n", r[0], strings.ReplaceAll(r[1], "|", "\\|"), r[2])
	}
	fmt.Println(b.String())
	if out := os.Getenv("BENCH_OUT"); out != "" {
		os.MkdirAll(out, 0o755)
		j, _ := json.MarshalIndent(map[string]any{"results": results, "launcher_true_s": lt, "when": time.Now().UTC()}, "", "  ")
		os.WriteFile(filepath.Join(out, "bench.json"), j, 0o644)
		os.WriteFile(filepath.Join(out, "bench.md"), []byte(b.String()), 0o644)
	}
}
