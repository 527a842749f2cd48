package forensics

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/edgemigrate/orchestrate/cluster"
	"github.com/edgemigrate/orchestrate/transfer"
)

// A snapshot stream is accepted only while the replicated state says it is
// coming: before it streams, the container's host takes the raft lock
// uploadLock(id) (limit 1) as its holder, with the store host in the reason
// (uploadReason). The store host accepts the stream only when that lock
// names it and the stream's sender, as bound to its SSH client key, holds
// it; it accepts the commit only for a record that matches the lock. The
// container's host releases the lock once the snapshot is recorded or has
// failed; the store host releases locks left by a host that died (older
// than OrphanGrace) when it prunes.
const uploadLockPrefix = "snapshot-upload/"

func uploadLock(id string) string { return uploadLockPrefix + id }

func uploadReason(storeHost, container string) string {
	return "store=" + storeHost + " container=" + container
}

// ErrUnauthorized: a snapshot stream or commit that no pending upload in
// the replicated state names.
var ErrUnauthorized = errors.New("snapshot upload not authorised by the replicated state")

// pendingUpload is the lock that authorises snapshot id, as this host's
// replica sees it.
type pendingUpload struct {
	holder, storeHost, container string
	at                           time.Time
}

func (a *Agent) pending(id string) (pendingUpload, bool) {
	for _, l := range a.c.Locks() {
		if l.Name != uploadLock(id) {
			continue
		}
		for _, h := range l.Holders {
			p := pendingUpload{holder: h.Holder, at: h.AcquiredAt}
			for _, f := range strings.Fields(h.Reason) {
				k, v, _ := strings.Cut(f, "=")
				switch k {
				case "store":
					p.storeHost = v
				case "container":
					p.container = v
				}
			}
			return p, true
		}
	}
	return pendingUpload{}, false
}

// authorizeUpload checks a snapshot stream against the replicated state.
// The lock was committed before the sender started, but this host's
// replica may not have applied it yet: it waits up to a few seconds.
func (a *Agent) authorizeUpload(ctx context.Context, id, sender string) error {
	if sender == "" {
		return fmt.Errorf("%w: snapshot %s: the stream's sender is not a known member", ErrUnauthorized, id)
	}
	ctx, cancel := context.WithTimeout(ctx, a.cfg.ReplicaWait)
	defer cancel()
	for {
		p, ok := a.pending(id)
		if ok {
			if p.storeHost != a.cfg.Host || p.holder != sender {
				return fmt.Errorf("%w: snapshot %s is pending from %s into %s, not from %s into %s", ErrUnauthorized, id, p.holder, p.storeHost, sender, a.cfg.Host)
			}
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: no pending upload of snapshot %s from %s into %s", ErrUnauthorized, id, sender, a.cfg.Host)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// beginUpload records, in the replicated state, that this host is about to
// stream snapshot id of container into storeHost. The returned function
// releases it; it runs after the request's context may have ended, so it
// has its own.
func (a *Agent) beginUpload(ctx context.Context, id, storeHost, container string) (func(), error) {
	req := cluster.AcquireLockRequest{Name: uploadLock(id), Holder: a.cfg.Host, Limit: 1,
		Reason: uploadReason(storeHost, container), At: a.cfg.Now().UTC()}
	if err := a.c.AcquireLock(ctx, req); err != nil {
		return nil, fmt.Errorf("snapshot %s: record the pending upload: %w", id, err)
	}
	return func() {
		rctx, cancel := context.WithTimeout(context.Background(), a.cfg.StepTimeout)
		defer cancel()
		if err := a.c.ReleaseLock(rctx, uploadLock(id), a.cfg.Host); err != nil && !errors.Is(err, cluster.ErrNotFound) {
			a.log.Warn("release the pending upload", "snapshot", id, "err", err)
		}
	}, nil
}

// releaseStaleUploads releases upload locks into this store host whose
// holder never finished (it died mid-snapshot): older than OrphanGrace.
func (a *Agent) releaseStaleUploads(ctx context.Context, now time.Time) {
	for _, l := range a.c.Locks() {
		id, ok := strings.CutPrefix(l.Name, uploadLockPrefix)
		if !ok {
			continue
		}
		p, ok := a.pending(id)
		if !ok || p.storeHost != a.cfg.Host || now.Sub(p.at) < a.cfg.OrphanGrace {
			continue
		}
		if err := a.c.ReleaseLock(ctx, l.Name, p.holder); err != nil && !errors.Is(err, cluster.ErrNotFound) {
			a.log.Warn("release a stale pending upload", "snapshot", id, "holder", p.holder, "err", err)
		}
	}
}

// senderOf is the member a transfer handler's stream comes from.
func senderOf(ctx context.Context) string {
	s, _ := transfer.Sender(ctx)
	return s
}
