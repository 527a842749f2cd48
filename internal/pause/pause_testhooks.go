//go:build testhooks

package pause

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// DirEnv names the directory of armed points.
const DirEnv = "ORCHESTRATE_TEST_PAUSE_DIR"

func at(ctx context.Context, point string) {
	dir := os.Getenv(DirEnv)
	if dir == "" {
		return
	}
	armed := filepath.Join(dir, point)
	if _, err := os.Stat(armed); err != nil {
		return
	}
	_ = os.WriteFile(armed+".reached", fmt.Appendf(nil, "%d\n", os.Getpid()), 0o600)
	for {
		if _, err := os.Stat(armed); err != nil {
			return
		}
		t := time.NewTimer(20 * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}
