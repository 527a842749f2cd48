package reboot

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/edgemigrate/orchestrate/engine"
	"github.com/edgemigrate/orchestrate/engine/enginetest"
	"github.com/edgemigrate/orchestrate/policy"
)

func TestMakePlan(t *testing.T) {
	cs := []engine.Container{
		{ID: "1", Name: "b", Running: true, MemoryBytes: 64 << 20},
		{ID: "2", Name: "a", Running: true, MemoryBytes: 64 << 20},
		{ID: "3", Name: "vip", Running: true, Labels: map[string]string{policy.LabelPriority: "10"}},
		{ID: "4", Name: "pinned", Running: true, Labels: map[string]string{policy.LabelMigrate: "false"}},
		{ID: "5", Name: "dead", State: "exited"},
		{ID: "6", Name: "low", Running: true, Labels: map[string]string{policy.LabelPriority: "-1"}},
	}
	p := MakePlan(cs, 1<<30)
	var order []string
	for _, c := range p.Save {
		order = append(order, c.Name)
	}
	if got := strings.Join(order, ","); got != "vip,a,b,low" {
		t.Fatalf("order %s, want vip,a,b,low", got)
	}
	if len(p.Skipped) != 2 || p.Skipped[0].Name != "dead" || p.Skipped[0].Reason != SkipNotRunning || p.Skipped[1].Reason != SkipOptedOut {
		t.Fatalf("skipped %+v", p.Skipped)
	}
	if p.NeedBytes != 2*(64<<20+perContainerSlack) || p.Problem() != "" {
		t.Fatalf("need %d, problem %q", p.NeedBytes, p.Problem())
	}
	if p := MakePlan(cs, 100<<20); !strings.Contains(p.Problem(), "free") {
		t.Fatalf("no room: problem %q", p.Problem())
	}
}

type harness struct {
	t     *testing.T
	dir   string
	eng   *enginetest.Fake
	store *Store
	reg   *prometheus.Registry
	mem   map[string][]byte // by name
}

func newHarness(t *testing.T) *harness {
	h := &harness{t: t, dir: filepath.Join(t.TempDir(), "reboot"), eng: enginetest.NewFake(), reg: prometheus.NewRegistry(), mem: map[string][]byte{}}
	h.store = h.newStore(h.eng)
	return h
}

func (h *harness) newStore(eng Engine) *Store {
	cfg := DefaultConfig()
	cfg.Dir, cfg.Host, cfg.Logger = h.dir, "h1", slog.New(slog.DiscardHandler)
	cfg.Metrics = NewMetrics(prometheus.NewRegistry())
	return NewStore(cfg, eng)
}

func (h *harness) run(name string, labels map[string]string) engine.Container {
	c := h.eng.Run(name, "localhost/workload:latest", 256<<10, labels)
	h.mem[name], _ = h.eng.Memory(c.ID)
	return c
}

func (h *harness) checkBack(eng *enginetest.Fake, names ...string) {
	h.t.Helper()
	for _, n := range names {
		c, err := eng.Inspect(context.Background(), n)
		if err != nil || !c.Running {
			h.t.Fatalf("%s: %+v %v", n, c, err)
		}
		mem, _ := eng.Memory(c.ID)
		if !bytes.Equal(mem, h.mem[n]) {
			h.t.Fatalf("%s came back with other memory", n)
		}
	}
}

func (h *harness) gone(names ...string) {
	h.t.Helper()
	for _, n := range names {
		if _, err := h.eng.Inspect(context.Background(), n); !errors.Is(err, engine.ErrNotFound) {
			h.t.Fatalf("%s still exists after its save (%v)", n, err)
		}
	}
}

func TestSaveAndRestore(t *testing.T) {
	h := newHarness(t)
	h.run("b", nil)
	h.run("a", map[string]string{policy.LabelPriority: "5"})
	pinned := h.run("pinned", map[string]string{policy.LabelMigrate: "false"})
	ctx := context.Background()
	var saved []string
	m, err := h.store.Save(ctx, func(p Progress) { saved = append(saved, p.Step+" "+p.Entry.Name) })
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(saved, ",") != "saved a,saved b" || !m.Complete || !h.store.Saved() || !h.store.Pending() {
		t.Fatalf("saved %v, manifest %+v", saved, m)
	}
	if len(m.Skipped) != 1 || m.Skipped[0].Container != pinned.ID {
		t.Fatalf("skipped %+v", m.Skipped)
	}
	for _, e := range m.Entries {
		fi, err := os.Stat(filepath.Join(h.dir, "save", e.File))
		if err != nil || fi.Size() != e.Size || len(e.SHA256) != 64 || e.ImageFile == "" || !e.Removed {
			t.Fatalf("entry %+v: %v", e, err)
		}
	}
	h.gone("a", "b")
	if c, _ := h.eng.Inspect(ctx, "pinned"); !c.Running {
		t.Fatal("the opted-out container was touched")
	}
	// A second Save with everything saved does nothing.
	if _, err := h.store.Save(ctx, nil); err != nil {
		t.Fatal(err)
	}
	// The boot: an engine that lost its images too.
	after := enginetest.NewFake()
	store := h.newStore(after)
	var restored []string
	res, err := store.Restore(ctx, func(p Progress) { restored = append(restored, p.Step+" "+p.Entry.Name) })
	if err != nil || len(res.Failed) != 0 || len(res.Restored) != 2 {
		t.Fatalf("restore: %+v %v", res, err)
	}
	if strings.Join(restored, ",") != "restored a,restored b" {
		t.Fatalf("restore order %v", restored)
	}
	h.checkBack(after, "a", "b")
	if _, err := os.Stat(filepath.Join(h.dir, "save")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the save was not cleaned up: %v", err)
	}
	if store.Pending() || store.Saved() {
		t.Fatal("still pending after the restore")
	}
}

func TestSaveFailureLeavesContainerRunning(t *testing.T) {
	h := newHarness(t)
	h.run("a", map[string]string{policy.LabelPriority: "2"})
	bad := h.run("b", nil)
	h.eng.FailCheckpoint = func(id string) error {
		if id == bad.ID {
			return errors.New("criu: Can't get rlimit 0")
		}
		return nil
	}
	ctx := context.Background()
	var steps []string
	_, err := h.store.Save(ctx, func(p Progress) { steps = append(steps, p.Step+" "+p.Entry.Name) })
	if err == nil || !strings.Contains(err.Error(), "rlimit") {
		t.Fatalf("save: %v", err)
	}
	if strings.Join(steps, ",") != "saved a,save failed b" || h.store.Saved() {
		t.Fatalf("steps %v saved %v", steps, h.store.Saved())
	}
	if c, _ := h.eng.Inspect(ctx, "b"); !c.Running {
		t.Fatal("the container whose checkpoint failed is not running")
	}
	// The caller calls the reboot off and brings back what was saved.
	if res, err := h.store.Restore(ctx, nil); err != nil || len(res.Restored) != 1 {
		t.Fatalf("restore after a failed save: %+v %v", res, err)
	}
	h.checkBack(h.eng, "a", "b")
	if h.store.Pending() {
		t.Fatal("pending after the restore")
	}
}

// An agent killed mid-save: the first container saved, the second stopped
// by the engine with its checkpoint kept but not recorded, a partial
// archive on disk. The next Save resumes the second and carries on.
func TestSaveCarriesOnAfterKill(t *testing.T) {
	h := newHarness(t)
	h.run("a", map[string]string{policy.LabelPriority: "2"})
	b := h.run("b", nil)
	h.run("c", nil)
	ctx, cancel := context.WithCancel(context.Background())
	_, err := h.store.Save(ctx, func(p Progress) {
		if p.Entry.Name == "a" {
			cancel()
		}
	})
	if err == nil {
		t.Fatal("save went on after its context ended")
	}
	if _, err := h.eng.Checkpoint(context.Background(), b.ID, io.Discard, engine.CheckpointOptions{Keep: true}); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(h.dir, "save", "junk.tar.partial"), []byte("half"), 0o600); err != nil {
		t.Fatal(err)
	}
	m, err := h.newStore(h.eng).Save(context.Background(), nil)
	if err != nil || !m.Complete {
		t.Fatalf("carry on: %+v %v", m, err)
	}
	h.gone("a", "b", "c")
	after := enginetest.NewFake()
	if res, err := h.newStore(after).Restore(context.Background(), nil); err != nil || len(res.Restored) != 3 {
		t.Fatalf("restore: %+v %v", res, err)
	}
	h.checkBack(after, "a", "b", "c")
}

// An agent killed mid-restore: the next start carries on; a container the
// engine finished restoring counts, a stopped copy is redone.
func TestRestoreCarriesOnAfterKill(t *testing.T) {
	h := newHarness(t)
	for _, n := range []string{"a", "b", "c"} {
		h.run(n, nil)
	}
	if _, err := h.store.Save(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	after := enginetest.NewFake()
	ctx, cancel := context.WithCancel(context.Background())
	res, err := h.newStore(after).Restore(ctx, func(p Progress) { cancel() })
	if !errors.Is(err, context.Canceled) || len(res.Restored) != 1 {
		t.Fatalf("first run: %+v %v", res, err)
	}
	// b was being restored when the agent died, and the engine finished it.
	m, _, _ := h.store.Manifest()
	f, _ := os.Open(filepath.Join(h.dir, "save", m.Entries[1].File))
	if _, _, err := after.Restore(context.Background(), f, engine.RestoreOptions{}); err != nil {
		t.Fatal(err)
	}
	f.Close()
	m.Entries[1].State = StateRestoring
	if err := h.store.write(m); err != nil {
		t.Fatal(err)
	}
	res, err = h.newStore(after).Restore(context.Background(), nil)
	if err != nil || len(res.Restored) != 2 || len(res.Failed) != 0 {
		t.Fatalf("second run: %+v %v", res, err)
	}
	h.checkBack(after, "a", "b", "c")
}

func TestCorruptCheckpointIsKeptAndRetried(t *testing.T) {
	h := newHarness(t)
	for _, n := range []string{"a", "b", "c"} {
		h.run(n, nil)
	}
	m, err := h.store.Save(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	bad := m.Entries[1]
	path := filepath.Join(h.dir, "save", bad.File)
	flip(t, path, bad.Size/2)
	reg := prometheus.NewRegistry()
	cfg := h.store.cfg
	cfg.Metrics = NewMetrics(reg)
	after := enginetest.NewFake()
	store := NewStore(cfg, after)
	var failed []Progress
	res, err := store.Restore(context.Background(), func(p Progress) {
		if p.Step == StepRestoreFailed {
			failed = append(failed, p)
		}
	})
	if err != nil || len(res.Restored) != 2 || len(res.Failed) != 1 || len(failed) != 1 {
		t.Fatalf("restore: %+v %v", res, err)
	}
	if !errors.Is(failed[0].Err, ErrCorrupt) || failed[0].Entry.Name != bad.Name {
		t.Fatalf("failure %+v", failed[0])
	}
	h.checkBack(after, m.Entries[0].Name, m.Entries[2].Name)
	if _, err := after.Inspect(context.Background(), bad.Name); !errors.Is(err, engine.ErrNotFound) {
		t.Fatalf("a corrupt checkpoint left a container: %v", err)
	}
	if got := metricValue(cfg.Metrics.restores.WithLabelValues("failed")); got != 1 {
		t.Fatalf("failed restores metric %v", got)
	}
	if got := metricValue(cfg.Metrics.keptGauge); got != 1 {
		t.Fatalf("kept gauge %v", got)
	}
	kept, err := store.Kept()
	if err != nil || len(kept) != 1 || kept[0].ID != bad.ID || kept[0].State != StateFailed {
		t.Fatalf("kept %+v %v", kept, err)
	}
	// Still corrupt: the retry fails and keeps it.
	if _, err := store.RetryKept(context.Background(), bad.ID); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("retry of a corrupt checkpoint: %v", err)
	}
	// Repaired (the same bit flipped back): the retry brings it back.
	flip(t, filepath.Join(h.dir, "kept", bad.ID, "checkpoint.tar"), bad.Size/2)
	c, err := store.RetryKept(context.Background(), bad.ID)
	if err != nil || c.Name != bad.Name {
		t.Fatalf("retry: %+v %v", c, err)
	}
	h.checkBack(after, bad.Name)
	if kept, _ := store.Kept(); len(kept) != 0 {
		t.Fatalf("still kept after the retry: %+v", kept)
	}
	if _, err := store.RetryKept(context.Background(), "../etc"); !errors.Is(err, ErrNoKept) {
		t.Fatalf("bad id: %v", err)
	}
}

func flip(t *testing.T, path string, at int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, at); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0x40
	if _, err := f.WriteAt(b, at); err != nil {
		t.Fatal(err)
	}
}

// A name taken by a container that is not ours is refused and the
// checkpoint kept, never the other container touched.
func TestRestoreRefusesNameClash(t *testing.T) {
	h := newHarness(t)
	h.run("a", nil)
	if _, err := h.store.Save(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	other := h.eng.Run("a", "localhost/other:latest", 1024, nil)
	res, err := h.store.Restore(context.Background(), nil)
	if err != nil || len(res.Failed) != 1 || !strings.Contains(res.Failed[0].Error, "another container") {
		t.Fatalf("restore: %+v %v", res, err)
	}
	if c, err := h.eng.Inspect(context.Background(), other.ID); err != nil || !c.Running {
		t.Fatalf("the other container: %+v %v", c, err)
	}
}

func TestSaveRefusesWhenDiskTooSmall(t *testing.T) {
	h := newHarness(t)
	h.eng.Run("big", "img", 64<<20, nil)
	cfg := h.store.cfg
	cfg.Free = func(string) (int64, error) { return 10 << 20, nil }
	_, err := NewStore(cfg, h.eng).Save(context.Background(), nil)
	if err == nil || !strings.Contains(err.Error(), "MiB free") {
		t.Fatalf("save: %v", err)
	}
	if c, _ := h.eng.Inspect(context.Background(), "big"); !c.Running {
		t.Fatal("container touched although the save was refused")
	}
}

func TestSequenceRoundTrip(t *testing.T) {
	dir := t.TempDir()
	if s, err := LoadSequence(dir); s != nil || err != nil {
		t.Fatalf("empty: %+v %v", s, err)
	}
	in := &Sequence{Reason: "kernel", Manual: true, Mode: policy.RebootModeLocal, Phase: PhaseRebooting, Started: time.Now().UTC().Round(0),
		Moves: []Move{{Container: "c", Name: "n", To: "h2", Migration: "m"}}}
	if err := SaveSequence(dir, in); err != nil {
		t.Fatal(err)
	}
	out, err := LoadSequence(dir)
	if err != nil || out.Phase != PhaseRebooting || !out.Started.Equal(in.Started) || len(out.Moves) != 1 || !out.Active() {
		t.Fatalf("%+v %v", out, err)
	}
}

func metricValue(c prometheus.Metric) float64 {
	var d dto.Metric
	if err := c.Write(&d); err != nil {
		return -1
	}
	if d.Counter != nil {
		return d.Counter.GetValue()
	}
	return d.Gauge.GetValue()
}

// slowEngine does not answer its first calls, as an engine still starting
// after the boot.
type slowEngine struct {
	*enginetest.Fake
	down int
}

func (s *slowEngine) List(ctx context.Context) ([]engine.Container, error) {
	if s.down > 0 {
		s.down--
		return nil, errors.New("dial unix /run/podman/podman.sock: connect: connection refused")
	}
	return s.Fake.List(ctx)
}

// A restore waits for an engine that does not answer yet instead of
// counting its containers as failed.
func TestRestoreWaitsForTheEngine(t *testing.T) {
	h := newHarness(t)
	h.run("a", nil)
	if _, err := h.store.Save(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	after := &slowEngine{Fake: enginetest.NewFake(), down: 3}
	res, err := h.newStore(after).Restore(context.Background(), nil)
	if err != nil || len(res.Restored) != 1 || len(res.Failed) != 0 || after.down != 0 {
		t.Fatalf("restore: %+v %v", res, err)
	}
}
