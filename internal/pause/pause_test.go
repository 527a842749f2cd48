//go:build testhooks

package pause

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestAtWaitsWhileArmed(t *testing.T) {
	dir := t.TempDir()
	t.Setenv(DirEnv, dir)
	At(context.Background(), Restoring) // not armed: returns at once
	armed := filepath.Join(dir, Restoring)
	if err := os.WriteFile(armed, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { At(context.Background(), Restoring); close(done) }()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := os.Stat(armed + ".reached"); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("not reached")
		}
		time.Sleep(5 * time.Millisecond)
	}
	select {
	case <-done:
		t.Fatal("did not wait")
	case <-time.After(50 * time.Millisecond):
	}
	os.Remove(armed)
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("did not go on once released")
	}
}
