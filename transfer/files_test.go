package transfer

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pkg/sftp"
	"golang.org/x/crypto/ssh"
)

func writeTemp(t *testing.T, data []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "src.bin")
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func sum(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func noPartials(t *testing.T, dir string) {
	t.Helper()
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && strings.HasSuffix(p, partialSuffix) {
			t.Errorf("partial file left behind: %s", p)
		}
		return nil
	})
}

// cutOnce returns a progress func that cuts p's connections once the
// transfer passes at bytes.
func cutOnce(p *proxy, at int64) (ProgressFunc, *atomic.Bool) {
	var done atomic.Bool
	return func(pr Progress) {
		if !pr.Done && pr.Bytes >= at && done.CompareAndSwap(false, true) {
			p.cut()
		}
	}, &done
}

func TestUploadDownloadOwnServer(t *testing.T) {
	ts, client := pair(t, nil, nil)
	data := payload(5<<20 + 17)
	src := writeTemp(t, data)
	ctx := context.Background()
	st, err := client.Upload(ctx, ts.addr, src, "images/web.tar")
	if err == nil {
		t.Fatal("upload into a missing directory should fail")
	}
	if err := os.Mkdir(filepath.Join(ts.spool, "images"), 0o700); err != nil {
		t.Fatal(err)
	}
	st, err = client.Upload(ctx, ts.addr, src, "images/web.tar")
	if err != nil {
		t.Fatal(err)
	}
	if st.Verified != "server-sha256" || st.SHA256 != sum(data) {
		t.Fatalf("stats %+v", st)
	}
	got, err := os.ReadFile(filepath.Join(ts.spool, "images/web.tar"))
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("spool copy differs (err %v)", err)
	}
	noPartials(t, ts.spool)

	dst := filepath.Join(t.TempDir(), "back.tar")
	dst2, err := client.Download(ctx, ts.addr, "images/web.tar", dst)
	if err != nil {
		t.Fatal(err)
	}
	if dst2.Verified != "server-sha256" || dst2.SHA256 != sum(data) {
		t.Fatalf("download stats %+v", dst2)
	}
	back, _ := os.ReadFile(dst)
	if !bytes.Equal(back, data) {
		t.Fatal("downloaded copy differs")
	}
}

func TestUploadResumesAfterCut(t *testing.T) {
	ck := newSigner(t)
	ts := startServer(t, []ssh.PublicKey{ck.PublicKey()}, nil)
	px := newProxy(t, ts.addr)
	hk := NewHostKeyMap()
	hk.Set(px.addr(), ts.hostKey.PublicKey())
	data := payload(48 << 20)
	prog, cut := cutOnce(px, 24<<20)
	client := newTestClient(t, ck, hk, func(c *ClientConfig) {
		c.Progress = prog
		c.progressEvery = time.Nanosecond // keep the cut mid-transfer on fast machines
	})
	st, err := client.Upload(context.Background(), px.addr(), writeTemp(t, data), "ckpt.tar")
	if err != nil {
		t.Fatal(err)
	}
	if !cut.Load() || st.Attempts < 2 || st.ResumedFrom == 0 {
		t.Fatalf("want a resumed upload, got %+v (cut %v)", st, cut.Load())
	}
	got, _ := os.ReadFile(filepath.Join(ts.spool, "ckpt.tar"))
	if sum(got) != sum(data) || st.SHA256 != sum(data) {
		t.Fatal("hash mismatch after resume")
	}
	noPartials(t, ts.spool)
	t.Logf("%+v", st)
}

func TestOpenSSHInterop(t *testing.T) {
	d := startSSHD(t)
	px := newProxy(t, d.addr)
	hk := NewHostKeyMap()
	hk.Set(d.addr, d.hostKey)
	hk.Set(px.addr(), d.hostKey)
	data := payload(40 << 20)
	prog, cut := cutOnce(px, 20<<20)
	var progMu sync.Mutex
	var cutEnabled bool
	client := newTestClient(t, d.client, hk, func(c *ClientConfig) {
		c.User = "root"
		c.Progress = func(p Progress) {
			progMu.Lock()
			defer progMu.Unlock()
			if cutEnabled {
				prog(p)
			}
		}
		c.progressEvery = time.Nanosecond
	})
	ctx := context.Background()
	src := writeTemp(t, data)

	t.Run("upload", func(t *testing.T) {
		st, err := client.Upload(ctx, d.addr, src, "plain.tar")
		if err != nil {
			t.Fatal(err)
		}
		if st.Verified != "read-back" || st.SHA256 != sum(data) {
			t.Fatalf("stats %+v", st)
		}
		got, _ := os.ReadFile(filepath.Join(d.root, "plain.tar"))
		if sum(got) != sum(data) {
			t.Fatal("sshd copy differs")
		}
	})
	t.Run("resume", func(t *testing.T) {
		progMu.Lock()
		cutEnabled = true
		progMu.Unlock()
		defer func() { progMu.Lock(); cutEnabled = false; progMu.Unlock() }()
		st, err := client.Upload(ctx, px.addr(), src, "resumed.tar")
		if err != nil {
			t.Fatal(err)
		}
		if !cut.Load() || st.Attempts < 2 || st.ResumedFrom == 0 {
			t.Fatalf("want a resumed upload, got %+v", st)
		}
		got, _ := os.ReadFile(filepath.Join(d.root, "resumed.tar"))
		if sum(got) != sum(data) {
			t.Fatal("sshd copy differs after resume")
		}
		noPartials(t, d.root)
	})
	t.Run("resume-stale-partial", func(t *testing.T) {
		// A partial left by an earlier run, with garbage at its end (a hole
		// from pipelined writes), resumes and still verifies.
		part := append(bytes.Clone(data[:9<<20]), make([]byte, 1<<20)...)
		if err := os.WriteFile(filepath.Join(d.root, "stale.tar.partial"), part, 0o600); err != nil {
			t.Fatal(err)
		}
		st, err := client.Upload(ctx, d.addr, src, "stale.tar")
		if err != nil {
			t.Fatal(err)
		}
		if st.ResumedFrom != 10<<20-resumeBackoff {
			t.Fatalf("resumed from %d", st.ResumedFrom)
		}
		got, _ := os.ReadFile(filepath.Join(d.root, "stale.tar"))
		if sum(got) != sum(data) {
			t.Fatal("copy differs")
		}
	})
	t.Run("download", func(t *testing.T) {
		dst := filepath.Join(t.TempDir(), "down.tar")
		// Half of it already here from an interrupted earlier download.
		if err := os.WriteFile(dst+partialSuffix, data[:7<<20], 0o600); err != nil {
			t.Fatal(err)
		}
		st, err := client.Download(ctx, d.addr, "plain.tar", dst)
		if err != nil {
			t.Fatal(err)
		}
		if st.ResumedFrom != 7<<20 || st.SHA256 != sum(data) {
			t.Fatalf("stats %+v", st)
		}
		got, _ := os.ReadFile(dst)
		if sum(got) != sum(data) {
			t.Fatal("downloaded copy differs")
		}
	})
	t.Run("traversal", func(t *testing.T) {
		if _, err := client.Upload(ctx, d.addr, src, "../escape.tar"); !errors.Is(err, ErrBadName) {
			t.Fatalf("err = %v, want ErrBadName", err)
		}
	})
}

func TestHostKeyVerification(t *testing.T) {
	ck := newSigner(t)
	ts := startServer(t, []ssh.PublicKey{ck.PublicKey()}, nil)
	ctx := context.Background()

	unknown := newTestClient(t, ck, NewHostKeyMap(), nil)
	if _, err := unknown.Upload(ctx, ts.addr, writeTemp(t, []byte("x")), "x"); !errors.Is(err, ErrUnknownHost) {
		t.Fatalf("unknown host: err = %v, want ErrUnknownHost", err)
	}
	wrong := NewHostKeyMap()
	wrong.Set(ts.addr, newSigner(t).PublicKey())
	c := newTestClient(t, ck, wrong, nil)
	if _, _, err := c.SendStream(ctx, ts.addr, StreamHeader{Kind: "k", ID: "x"}, bytes.NewReader(nil)); !errors.Is(err, ErrHostKeyMismatch) {
		t.Fatalf("wrong host key: err = %v, want ErrHostKeyMismatch", err)
	}
	noPartials(t, ts.spool)
}

func TestUnauthorisedClientRefused(t *testing.T) {
	ts, _ := pair(t, nil, nil)
	stranger := newSigner(t)
	hk := NewHostKeyMap()
	hk.Set(ts.addr, ts.hostKey.PublicKey())
	c := newTestClient(t, stranger, hk, func(c *ClientConfig) { c.Retries = 0 })
	_, err := c.Upload(context.Background(), ts.addr, writeTemp(t, []byte("x")), "x")
	if !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("err = %v, want ErrUnauthorized", err)
	}
	if _, err := os.Stat(filepath.Join(ts.spool, "x")); err == nil {
		t.Fatal("unauthorised upload landed")
	}
	// The cluster adds the key: the same client gets in.
	ts.auth.Add(stranger.PublicKey())
	if _, err := c.Upload(context.Background(), ts.addr, writeTemp(t, []byte("x")), "x"); err != nil {
		t.Fatal(err)
	}
}

func TestPathTraversalRefused(t *testing.T) {
	ts, client := pair(t, nil, nil)
	ctx := context.Background()
	src := writeTemp(t, []byte("secret"))
	for _, name := range []string{"", "../x", "a/../../x", "/etc/passwd", "a//b", "./x", "x.partial", "a\\..\\b", "x\x00y"} {
		if _, err := client.Upload(ctx, ts.addr, src, name); !errors.Is(err, ErrBadName) {
			t.Errorf("upload %q: err = %v, want ErrBadName", name, err)
		}
		if _, err := client.Download(ctx, ts.addr, name, filepath.Join(t.TempDir(), "o")); !errors.Is(err, ErrBadName) {
			t.Errorf("download %q: err = %v, want ErrBadName", name, err)
		}
	}
	// A symlink inside the spool that points out of it is not followed.
	outside := filepath.Join(t.TempDir(), "outside")
	os.WriteFile(outside, []byte("host secret"), 0o600)
	if err := os.Symlink(outside, filepath.Join(ts.spool, "link")); err != nil {
		t.Fatal(err)
	}
	if _, err := client.Download(ctx, ts.addr, "link", filepath.Join(t.TempDir(), "o")); err == nil {
		t.Fatal("download through a symlink out of the spool succeeded")
	}
	if err := os.Symlink(filepath.Dir(outside), filepath.Join(ts.spool, "dirlink")); err != nil {
		t.Fatal(err)
	}
	if _, err := client.Upload(ctx, ts.addr, src, "dirlink/planted"); err == nil {
		t.Fatal("upload through a symlinked directory succeeded")
	}
	if _, err := os.Stat(filepath.Join(filepath.Dir(outside), "planted.partial")); err == nil {
		t.Fatal("file planted outside the spool")
	}

	// A raw SFTP client, bypassing CheckName, stays inside the spool too.
	pc, _, err := client.conn(ctx, ts.addr)
	if err != nil {
		t.Fatal(err)
	}
	sc, err := sftp.NewClient(pc.ssh)
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	if _, err := sc.Open("../../../../etc/passwd"); err == nil {
		t.Fatal("raw sftp read /etc/passwd")
	}
	if _, err := sc.Open("link"); err == nil {
		t.Fatal("raw sftp followed a symlink out")
	}
	if err := sc.Symlink("/etc/passwd", "evil"); err == nil {
		t.Fatal("raw sftp created a symlink")
	}
	f, err := sc.Create("../../../escaped")
	if err == nil {
		f.Write([]byte("x"))
		f.Close()
		if _, err := os.Stat(filepath.Join(ts.spool, "escaped")); err != nil {
			t.Fatalf("\"../../../escaped\" landed outside the spool: %v", err)
		}
	}
	if _, _, ok, err := pc.hashRemote("../../etc/passwd"); ok && err == nil {
		t.Fatal("server hashed a file outside the spool")
	}
}

func TestCancelledUploadRemovesPartial(t *testing.T) {
	ts, _ := pair(t, nil, nil)
	ck := newSigner(t)
	ts.auth.Add(ck.PublicKey())
	hk := NewHostKeyMap()
	hk.Set(ts.addr, ts.hostKey.PublicKey())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	client := newTestClient(t, ck, hk, func(c *ClientConfig) {
		c.progressEvery = time.Nanosecond
		c.Progress = func(p Progress) {
			if p.Bytes >= 4<<20 {
				cancel()
			}
		}
	})
	_, err := client.Upload(ctx, ts.addr, writeTemp(t, payload(32<<20)), "big.tar")
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	waitFor(t, 5*time.Second, "partial removed", func() bool {
		_, err := os.Stat(filepath.Join(ts.spool, "big.tar.partial"))
		return errors.Is(err, os.ErrNotExist)
	})
}

func TestUploadDiskFull(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting a tmpfs needs root")
	}
	spool := filepath.Join(t.TempDir(), "spool")
	os.Mkdir(spool, 0o700)
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", spool).CombinedOutput(); err != nil {
		t.Skipf("cannot mount tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", spool).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", spool, err, out)
		}
	})
	// No free-space reserve: the file system itself fills up.
	ts, client := pair(t, func(c *ServerConfig) { c.SpoolDir, c.MinFreeBytes = spool, 0 }, nil)
	_, err := client.Upload(context.Background(), ts.addr, writeTemp(t, payload(3<<20)), "big.tar")
	if !errors.Is(err, ErrNoSpace) {
		t.Fatalf("err = %v, want ErrNoSpace", err)
	}
	t.Log(err)
	waitFor(t, 5*time.Second, "partial removed", func() bool {
		ents, _ := os.ReadDir(spool)
		return len(ents) == 0
	})
}

func TestStalePartialsSwept(t *testing.T) {
	spool := filepath.Join(t.TempDir(), "spool")
	os.MkdirAll(filepath.Join(spool, "d"), 0o700)
	old := time.Now().Add(-2 * time.Hour)
	for _, n := range []string{"old.partial", "d/old2.partial", "fresh.partial", "keep.tar"} {
		p := filepath.Join(spool, n)
		os.WriteFile(p, []byte("x"), 0o600)
		if n != "fresh.partial" {
			os.Chtimes(p, old, old)
		}
	}
	startServer(t, nil, func(c *ServerConfig) { c.SpoolDir, c.PartialTTL = spool, time.Hour })
	waitFor(t, 5*time.Second, "stale partials removed", func() bool {
		_, e1 := os.Stat(filepath.Join(spool, "old.partial"))
		_, e2 := os.Stat(filepath.Join(spool, "d/old2.partial"))
		return errors.Is(e1, os.ErrNotExist) && errors.Is(e2, os.ErrNotExist)
	})
	for _, n := range []string{"fresh.partial", "keep.tar"} {
		if _, err := os.Stat(filepath.Join(spool, n)); err != nil {
			t.Errorf("%s: %v", n, err)
		}
	}
}

func TestLoadOrCreateKey(t *testing.T) {
	p := filepath.Join(t.TempDir(), "data", "ssh_host_ed25519_key")
	k1, err := LoadOrCreateKey(p)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(p)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v, err %v", fi.Mode(), err)
	}
	k2, err := LoadOrCreateKey(p)
	if err != nil || !bytes.Equal(k1.PublicKey().Marshal(), k2.PublicKey().Marshal()) {
		t.Fatalf("reload gave a different key (err %v)", err)
	}
	if k1.PublicKey().Type() != ssh.KeyAlgoED25519 {
		t.Fatalf("type %s", k1.PublicKey().Type())
	}
	os.WriteFile(p, []byte("garbage"), 0o600)
	if _, err := LoadOrCreateKey(p); err == nil {
		t.Fatal("garbage key accepted")
	}
}
