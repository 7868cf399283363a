//go:build soak

package integration

import (
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Run with `make soak` (not in CI): 10,000 sequential connections and 200
// concurrent sessions; the server's open files, goroutines and memory must
// return to their starting level.
func TestSoak(t *testing.T) {
	pprofAddr := freeAddr(t)
	s := startServer(t, serverOpt{args: []string{"--pprof", pprofAddr, "--log-level", "info"}})
	pid := strconv.Itoa(s.cmd.Process.Pid)
	fds := func() int {
		ents, _ := os.ReadDir("/proc/" + pid + "/fd")
		return len(ents)
	}
	goroutines := func() int { return pprofGoroutines(t, pprofAddr) }
	// heapKiB is the server's Go heap in use after a collection: RSS is
	// no measure, as the runtime returns freed memory to the system
	// lazily (and the race detector keeps shadow memory).
	heapKiB := func() int {
		resp, err := http.Get("http://" + pprofAddr + "/debug/pprof/heap?gc=1&debug=1")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "# HeapInuse = "); ok {
				n, _ := strconv.Atoi(strings.TrimSpace(v))
				return n / 1024
			}
		}
		t.Fatal("no HeapInuse in the heap profile")
		return 0
	}
	// Warm up the allocator and caches with a few rounds first.
	c := s.dialGo(t)
	for range 20 {
		sess, _ := c.NewSession()
		sess.Run("true")
	}
	c.Close()
	time.Sleep(time.Second)
	fd0, g0, m0 := fds(), goroutines(), heapKiB()
	t.Logf("start: %d fds, %d goroutines, %d KiB", fd0, g0, m0)

	start := time.Now()
	for i := range 10000 {
		c := s.dialGo(t)
		sess, err := c.NewSession()
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		if err := sess.Run("true"); err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		c.Close()
	}
	t.Logf("10,000 sequential connections in %s", time.Since(start).Round(time.Second))
	settled := func(stage string) {
		// Closed connections take a moment to be noticed.
		if !waitFor(time.Minute, func() bool { return fds() <= fd0+5 && goroutines() <= g0+10 }) {
			t.Errorf("after %s: %d fds (start %d), %d goroutines (start %d)", stage, fds(), fd0, goroutines(), g0)
		}
		if m := heapKiB(); m > m0+16*1024 {
			t.Errorf("after %s: heap grew from %d KiB to %d KiB", stage, m0, m)
		}
		t.Logf("after %s: %d fds, %d goroutines, %d KiB", stage, fds(), goroutines(), heapKiB())
	}
	settled("the sequential connections")

	var wg sync.WaitGroup
	errs := make(chan error, 200)
	var conns []io.Closer
	for range 20 {
		c := s.dialGo(t)
		conns = append(conns, c)
		for range 10 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				sess, err := c.NewSession()
				if err != nil {
					errs <- err
					return
				}
				if out, err := sess.Output("head -c 1000000 /dev/zero | wc -c"); err != nil || strings.TrimSpace(string(out)) != "1000000" {
					errs <- err
				}
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("concurrent session: %v", err)
	}
	for _, c := range conns {
		c.Close()
	}
	settled("200 concurrent sessions")
}
