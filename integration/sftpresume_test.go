package integration

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// openSSHSFTPServer is Debian's sftp-server (openssh-server), the oracle
// the SFTP tests compare with.
const openSSHSFTPServer = "/usr/lib/openssh/sftp-server"

// sftpOracle runs the sftp client's batch script against OpenSSH's own
// sftp-server (sftp -D), started in dir, and reports whether the batch
// succeeded and what it printed.
func sftpOracle(t *testing.T, dir, script string) (string, bool) {
	t.Helper()
	if _, err := os.Stat(openSSHSFTPServer); err != nil {
		t.Skipf("%s is needed (make test installs openssh-server): %v", openSSHSFTPServer, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "sftp", "-D", openSSHSFTPServer, "-b", "-")
	cmd.Dir = dir
	cmd.Stdin = strings.NewReader(script)
	out, err := cmd.CombinedOutput()
	return string(out), err == nil
}

// randomFile writes n bytes of seeded random data to path and returns them.
func randomFile(t *testing.T, path string, n int, seed byte) []byte {
	t.Helper()
	b := make([]byte, n)
	rand.NewChaCha8([32]byte{seed}).Read(b)
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return b
}

// TestSFTPResume: put -a, reput and reget resume byte for byte from
// partial files of 0, 1, 1 KiB, 1 MiB and all but one byte, with the
// results and the batch's success those of OpenSSH's sftp-server given
// the same script (which refuses to resume onto a missing file or onto a
// file as large as the source); while a transfer on another connection
// runs and completes byte for byte.
func TestSFTPResume(t *testing.T) {
	s := startServer(t, serverOpt{})
	oracle := t.TempDir()
	const size = 1200<<10 + 7
	full := filepath.Join(s.dir, "full")
	want := randomFile(t, full, size, 18)

	// A transfer on another connection, running throughout.
	other := startUpload(t, s, "other.bin", 4<<20)
	other.send(2 << 20)

	type tc struct {
		name   string
		remote []byte // the remote file before, nil: none
		local  []byte // the local file before, for reget
		script func(local, remote string) string
	}
	var cases []tc
	for _, k := range []int{0, 1, 1024, 1 << 20, size - 1, size} {
		part := want[:k]
		cases = append(cases,
			tc{fmt.Sprintf("put -a onto %d", k), part, nil, func(l, r string) string { return "put -a " + full + " " + r + "\n" }},
			tc{fmt.Sprintf("reput onto %d", k), part, nil, func(l, r string) string { return "reput " + full + " " + r + "\n" }},
			tc{fmt.Sprintf("reget onto %d", k), want, part, func(l, r string) string { return "reget " + r + " " + l + "\n" }},
			tc{fmt.Sprintf("get -a onto %d", k), want, part, func(l, r string) string { return "get -a " + r + " " + l + "\n" }},
		)
	}
	cases = append(cases, tc{"put -a onto nothing", nil, nil, func(l, r string) string { return "put -a " + full + " " + r + "\n" }})

	for i, c := range cases {
		remote := fmt.Sprintf("resume%d", i)
		local := filepath.Join(s.dir, remote+".local")
		localOracle := filepath.Join(oracle, remote+".local")
		for _, d := range []string{s.inPrefix("Users/root"), oracle} {
			if c.remote != nil {
				if err := os.WriteFile(filepath.Join(d, remote), c.remote, 0o644); err != nil {
					t.Fatal(err)
				}
			}
		}
		for _, l := range []string{local, localOracle} {
			if c.local != nil {
				if err := os.WriteFile(l, c.local, 0o644); err != nil {
					t.Fatal(err)
				}
			}
		}
		out, err := s.sftpBatch(t, c.script(local, remote))
		oout, ook := sftpOracle(t, oracle, c.script(localOracle, remote))
		if (err == nil) != ook {
			t.Errorf("%s: batch succeeded %v, with OpenSSH's sftp-server %v\nours:\n%s\nOpenSSH's:\n%s", c.name, err == nil, ook, out, oout)
		}
		result, oresult := filepath.Join(s.inPrefix("Users/root"), remote), filepath.Join(oracle, remote)
		if c.local != nil {
			result, oresult = local, localOracle
		}
		got, _ := os.ReadFile(result)
		ogot, _ := os.ReadFile(oresult)
		if !bytes.Equal(got, ogot) {
			t.Errorf("%s: %d bytes (sha256 %s), OpenSSH's sftp-server leaves %d bytes (sha256 %s)\n%s",
				c.name, len(got), sum(got), len(ogot), sum(ogot), out)
		}
		if ook && !bytes.Equal(got, want) {
			t.Errorf("%s: the resumed file is not the source: %d bytes, want %d", c.name, len(got), len(want))
		}
	}
	other.send(2 << 20)
	other.finish()
	if r := s.exec("echo alive", ""); r.stdout != "alive\n" {
		t.Errorf("after the resumes: %+v", r)
	}
}

func sum(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:8])
}

// upload is an upload through `ssh dut 'cat > FILE'` that the test feeds
// piece by piece, so that it runs while the test does something else.
type upload struct {
	t      *testing.T
	s      *server
	name   string
	data   []byte
	sent   int
	w      io.WriteCloser
	cmd    *exec.Cmd
	out    bytes.Buffer
	cancel context.CancelFunc
}

// startUpload starts an upload of n seeded random bytes to ~/name.
func startUpload(t *testing.T, s *server, name string, n int) *upload {
	t.Helper()
	u := &upload{t: t, s: s, name: name, data: make([]byte, n)}
	rand.NewChaCha8([32]byte{7}).Read(u.data)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	u.cancel = cancel
	u.cmd = s.ssh(ctx, "dut", "cat > ~/"+name+" && echo stored")
	var err error
	if u.w, err = u.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	u.cmd.Stdout, u.cmd.Stderr = &u.out, &u.out
	if err := u.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		u.cmd.Wait()
	})
	return u
}

// send writes the next n bytes of the upload.
func (u *upload) send(n int) {
	u.t.Helper()
	if _, err := u.w.Write(u.data[u.sent : u.sent+n]); err != nil {
		u.t.Fatalf("upload %s: %v", u.name, err)
	}
	u.sent += n
}

// finish ends the upload and checks that the remote file is what was sent.
func (u *upload) finish() {
	u.t.Helper()
	u.w.Close()
	err := u.cmd.Wait()
	u.cancel()
	if err != nil || u.out.String() != "stored\n" {
		u.t.Fatalf("upload %s: %v %q", u.name, err, u.out.String())
	}
	got, err := os.ReadFile(u.s.inPrefix("Users/root/" + u.name))
	if err != nil || !bytes.Equal(got, u.data[:u.sent]) {
		u.t.Errorf("upload %s: the remote file has %d bytes (sha256 %s), want %d (sha256 %s): %v",
			u.name, len(got), sum(got), u.sent, sum(u.data[:u.sent]), err)
	}
}

// TestSFTPCopy: sftp's cp (OpenSSH's copy-data extension) copies inside
// the prefix, byte for byte, with the batch's success that of OpenSSH's
// sftp-server given the same script; a missing source fails on both.
func TestSFTPCopy(t *testing.T) {
	s := startServer(t, serverOpt{})
	oracle := t.TempDir()
	full := filepath.Join(s.dir, "full")
	want := randomFile(t, full, 1200<<10+7, 5)
	script := "put " + full + " src\nmkdir sub\ncp src sub/copy\ncp src copy2\n-cp missing copy3\n"
	out, err := s.sftpBatch(t, script)
	oout, ook := sftpOracle(t, oracle, script)
	if err != nil || !ook {
		t.Fatalf("cp: %v\n%s\nOpenSSH's sftp-server (succeeded %v):\n%s", err, out, ook, oout)
	}
	for _, name := range []string{"sub/copy", "copy2"} {
		got, err := os.ReadFile(s.inPrefix("Users/root/" + name))
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s: %d bytes (sha256 %s), want %d (%s): %v", name, len(got), sum(got), len(want), sum(want), err)
		}
	}
	for _, dir := range []string{s.inPrefix("Users/root"), oracle} {
		if _, err := os.Stat(filepath.Join(dir, "copy3")); err == nil {
			t.Errorf("cp of a missing file made copy3 in %s", dir)
		}
	}
	if strings.Contains(out, "does not support copy-data") {
		t.Errorf("the client says copy-data is not offered:\n%s", out)
	}
}
