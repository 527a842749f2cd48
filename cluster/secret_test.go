package cluster

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestLoadSecret(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good")
	if err := WriteSecret(good); err != nil {
		t.Fatal(err)
	}
	if err := WriteSecret(good); err == nil {
		t.Fatal("WriteSecret overwrote an existing file")
	}
	write := func(name, content string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	hex64 := strings.Repeat("ab", 32)
	for _, c := range []struct {
		name string
		path string
		want string // "" ok, else a substring of the error
		weak bool
	}{
		{"keygen", good, "", false},
		{"hex 0400", write("ro", hex64+"\n", 0o400), "", false},
		{"longer hex", write("long", hex64+hex64, 0o600), "", false},
		{"mode 0644", write("open", hex64, 0o644), "chmod 0600", false},
		{"mode 0660", write("group", hex64, 0o660), "chmod 0600", false},
		{"16 bytes, as before", write("short", "0123456789abcdef", 0o600), "at least 64 hex digits", true},
		{"a passphrase", write("pass", "correct horse battery staple and some more words!!!!!!!!!!!!!!!!", 0o600), "not hex", true},
		{"missing", filepath.Join(dir, "nope"), "no such file", false},
		{"unset", "", "cluster.secret_file", false},
	} {
		t.Run(c.name, func(t *testing.T) {
			b, err := LoadSecret(c.path)
			if c.want == "" {
				if err != nil || len(b) < minSecretHex {
					t.Fatalf("LoadSecret = %q, %v", b, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), c.want) || !errors.Is(err, ErrNoSecret) {
				t.Fatalf("LoadSecret = %v, want ErrNoSecret mentioning %q", err, c.want)
			}
			if errors.Is(err, ErrWeakSecret) != c.weak {
				t.Fatalf("ErrWeakSecret = %v, want %v (%v)", !c.weak, c.weak, err)
			}
		})
	}
}

// The derived values of a keygen secret are what they were before the
// file checks: agents of two versions can share a cluster.
func TestSecretDerivationStable(t *testing.T) {
	secret := []byte(strings.Repeat("ab", 32))
	if got := APIToken(secret)[:16]; got != "6a6d4a09d41e8fd4" {
		t.Fatalf("API token prefix %s changed: every agent of an older version would refuse this one", got)
	}
}
