package reboot

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/edgemigrate/orchestrate/engine"
	"github.com/edgemigrate/orchestrate/internal/pause"
	"github.com/edgemigrate/orchestrate/policy"
)

// Engine is what saving and restoring need from the local engine.
type Engine interface {
	engine.Checkpointer
	engine.Restorer
	engine.Resumer
	engine.Lister
	engine.Remover
	engine.Images
}

// Config configures a Store.
type Config struct {
	// Dir is <node.data_dir>/reboot; it must survive the reboot.
	Dir string
	// Host is this host's name, for records.
	Host string
	// TCPEstablished checkpoints and restores established TCP connections
	// (Podman). Docker cannot, and refuses a container that holds one.
	TCPEstablished bool
	// StepTimeout bounds an engine call made to undo a failed step (resume
	// a container a failed checkpoint stopped).
	StepTimeout time.Duration
	Logger      *slog.Logger
	Metrics     *Metrics
	// Now is the clock; Free reports free bytes under a directory.
	Now  func() time.Time
	Free func(dir string) (int64, error)
}

// DefaultConfig returns the defaults; Dir must still be set.
func DefaultConfig() Config {
	return Config{TCPEstablished: true, StepTimeout: time.Minute, Logger: slog.Default(), Now: time.Now, Free: FreeBytes}
}

// Entry states.
const (
	StatePending   = "pending"   // planned, not saved yet
	StateSaved     = "saved"     // archive complete and recorded
	StateRestoring = "restoring" // a restore started
	StateRestored  = "restored"  // running again, verified; archive deleted
	StateFailed    = "failed"    // restore failed; the checkpoint is kept
	StateGone      = "gone"      // vanished or stopped before it was saved
	StateUnsaved   = "unsaved"   // the save was called off before it: it kept running
)

// Entry is one container of a local save, and the record of a kept
// checkpoint.
type Entry struct {
	ID             string `json:"id"` // <name>-<yyyymmdd-hhmmss>: the kept checkpoint's name
	Container      string `json:"container"`
	Name           string `json:"name"`
	Image          string `json:"image,omitempty"`
	ImageID        string `json:"image_id,omitempty"`
	Priority       int    `json:"priority"`
	TCPEstablished bool   `json:"tcp_established"`
	// The archive, relative to its directory.
	File   string `json:"file,omitempty"`
	Size   int64  `json:"size,omitempty"`
	SHA256 string `json:"sha256,omitempty"`
	// The image archive, loaded when the engine lacks the image.
	ImageFile   string `json:"image_file,omitempty"`
	ImageSize   int64  `json:"image_size,omitempty"`
	ImageSHA256 string `json:"image_sha256,omitempty"`

	State      string       `json:"state"`
	Removed    bool         `json:"removed,omitempty"` // the container was removed after its save
	Error      string       `json:"error,omitempty"`
	SavedAt    time.Time    `json:"saved_at,omitzero"`
	RestoredAt time.Time    `json:"restored_at,omitzero"`
	Checkpoint engine.Stats `json:"checkpoint_stats,omitzero"`
	Restore    engine.Stats `json:"restore_stats,omitzero"`
	Host       string       `json:"host,omitempty"`
}

// Manifest is a local save: what was saved, where, with which sums.
type Manifest struct {
	Version  int       `json:"version"`
	Host     string    `json:"host"`
	Created  time.Time `json:"created"`
	Complete bool      `json:"complete"` // every entry saved: the reboot may go ahead
	Entries  []Entry   `json:"entries"`  // in save and restore order
	Skipped  []Skip    `json:"skipped,omitempty"`
}

// unresolved reports whether some entry still needs saving or restoring.
func (m Manifest) unresolved() bool {
	for _, e := range m.Entries {
		if e.State == StatePending || e.State == StateSaved || e.State == StateRestoring {
			return true
		}
	}
	return false
}

// Progress reports one step of a save or restore.
type Progress struct {
	Step  string // StepSaved, StepSaveFailed, StepRestored, StepRestoreFailed
	Entry Entry
	Err   error
}

// Progress steps.
const (
	StepSaved         = "saved"
	StepSaveFailed    = "save failed"
	StepRestored      = "restored"
	StepRestoreFailed = "restore failed"
)

// Result is the outcome of a Restore.
type Result struct {
	Restored []Entry
	Failed   []Entry // kept: `orchestrate restore ID` retries them
	Duration time.Duration
}

// Store is one host's local checkpoints. Its operations run one at a time.
type Store struct {
	cfg Config
	eng Engine
	log *slog.Logger
	mu  sync.Mutex
}

// NewStore returns the store under cfg.Dir for eng.
func NewStore(cfg Config, eng Engine) *Store {
	d := DefaultConfig()
	if cfg.StepTimeout <= 0 {
		cfg.StepTimeout = d.StepTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = d.Logger
	}
	if cfg.Now == nil {
		cfg.Now = d.Now
	}
	if cfg.Free == nil {
		cfg.Free = d.Free
	}
	s := &Store{cfg: cfg, eng: eng, log: cfg.Logger}
	cfg.Metrics.kept(s.countKept())
	return s
}

func (s *Store) saveDir() string      { return filepath.Join(s.cfg.Dir, "save") }
func (s *Store) keptDir() string      { return filepath.Join(s.cfg.Dir, "kept") }
func (s *Store) manifestPath() string { return filepath.Join(s.saveDir(), "manifest.json") }

func (s *Store) load() (Manifest, bool, error) {
	var m Manifest
	ok, err := readJSON(s.manifestPath(), &m)
	return m, ok, err
}

func (s *Store) write(m Manifest) error {
	if err := writeJSON(s.manifestPath(), m); err != nil {
		return fmt.Errorf("write local reboot manifest: %w", err)
	}
	return nil
}

// Plan says what Save would do now.
func (s *Store) Plan(ctx context.Context) (Plan, error) {
	cs, err := s.eng.List(ctx)
	if err != nil {
		return Plan{}, fmt.Errorf("list containers: %w", err)
	}
	free, _ := s.cfg.Free(s.cfg.Dir)
	return MakePlan(cs, free), nil
}

// Manifest returns the current save, if any.
func (s *Store) Manifest() (Manifest, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.load()
}

// Saved reports whether a save is complete: the reboot may go ahead.
func (s *Store) Saved() bool {
	m, ok, err := s.Manifest()
	return err == nil && ok && m.Complete
}

// Pending reports whether a save (complete or not) has containers that are
// not back yet.
func (s *Store) Pending() bool {
	m, ok, err := s.Manifest()
	return err == nil && ok && m.unresolved()
}

var unsafeChars = regexp.MustCompile(`[^a-zA-Z0-9_.-]+`)

func entryID(name string, at time.Time) string {
	n := strings.TrimLeft(unsafeChars.ReplaceAllString(name, "_"), ".")
	if n == "" {
		n = "container"
	}
	return n + "-" + at.UTC().Format("20060102-150405")
}

// Save checkpoints every container of the plan to disk, highest priority
// first, removing each container once its archive is recorded. It carries
// on a save that an earlier run (a killed agent) left unfinished. On a
// checkpoint failure it returns the error at once; that container keeps
// running, and the caller should Restore what was saved.
func (s *Store) Save(ctx context.Context, report func(Progress)) (Manifest, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if report == nil {
		report = func(Progress) {}
	}
	if err := os.MkdirAll(filepath.Join(s.saveDir(), "images"), 0o700); err != nil {
		return Manifest{}, fmt.Errorf("local reboot: %w", err)
	}
	m, ok, err := s.load()
	if err != nil {
		return m, err
	}
	if !ok || !m.unresolved() && len(m.Entries) > 0 {
		if m, err = s.newManifest(ctx); err != nil {
			return m, err
		}
	}
	if m.Complete {
		return m, nil
	}
	for i := range m.Entries {
		e := &m.Entries[i]
		if e.State == StateSaved && !e.Removed {
			s.removeSaved(ctx, &m, e)
			continue
		}
		if e.State != StatePending {
			continue
		}
		if err := s.saveImage(ctx, &m, e); err != nil {
			s.cfg.Metrics.checkpoint(false)
			report(Progress{Step: StepSaveFailed, Entry: *e, Err: err})
			return m, err
		}
		if err := s.saveOne(ctx, &m, e); err != nil {
			if ctx.Err() == nil {
				s.cfg.Metrics.checkpoint(false)
				report(Progress{Step: StepSaveFailed, Entry: *e, Err: err})
			}
			return m, err
		}
		if e.State == StateSaved {
			s.cfg.Metrics.checkpoint(true)
			report(Progress{Step: StepSaved, Entry: *e})
			s.removeSaved(ctx, &m, e)
		}
	}
	m.Complete = true
	return m, s.write(m)
}

func (s *Store) newManifest(ctx context.Context) (Manifest, error) {
	p, err := s.Plan(ctx)
	if err != nil {
		return Manifest{}, err
	}
	if why := p.Problem(); why != "" {
		return Manifest{}, fmt.Errorf("local reboot: %s", why)
	}
	now := s.cfg.Now().UTC()
	m := Manifest{Version: 1, Host: s.cfg.Host, Created: now, Skipped: p.Skipped}
	for _, c := range p.Save {
		m.Entries = append(m.Entries, Entry{ID: entryID(c.Name, now), Container: c.ID, Name: c.Name, Image: c.Image,
			ImageID: c.ImageID, Priority: policy.Priority(c.Labels), TCPEstablished: s.cfg.TCPEstablished, State: StatePending})
	}
	return m, s.write(m)
}

// saveImage exports the entry's image once per image, so that the restore
// does not depend on the engine still holding it after the boot.
func (s *Store) saveImage(ctx context.Context, m *Manifest, e *Entry) error {
	if e.ImageFile != "" || e.ImageID == "" {
		return nil
	}
	for _, o := range m.Entries {
		if o.ImageID == e.ImageID && o.ImageFile != "" {
			e.ImageFile, e.ImageSize, e.ImageSHA256 = o.ImageFile, o.ImageSize, o.ImageSHA256
			return s.write(*m)
		}
	}
	name := filepath.Join("images", imageFileName(e.ImageID))
	w, err := createHashed(filepath.Join(s.saveDir(), name))
	if err != nil {
		return fmt.Errorf("save image %s of %s: %w", short(e.ImageID), e.Name, err)
	}
	if err := s.eng.ExportImage(ctx, e.ImageID, w); err != nil {
		w.abort()
		return fmt.Errorf("save image %s of %s: %w", short(e.ImageID), e.Name, err)
	}
	size, sum, err := w.commit()
	if err != nil {
		return fmt.Errorf("save image %s of %s: %w", short(e.ImageID), e.Name, err)
	}
	e.ImageFile, e.ImageSize, e.ImageSHA256 = name, size, sum
	return s.write(*m)
}

func imageFileName(id string) string {
	id = strings.TrimPrefix(id, "sha256:")
	return unsafeChars.ReplaceAllString(short(id), "_") + ".tar"
}

func short(id string) string {
	id = strings.TrimPrefix(id, "sha256:")
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// saveOne checkpoints one container into its archive and records it. A
// container that an interrupted earlier attempt left stopped, with the
// checkpoint its engine kept, is resumed first.
func (s *Store) saveOne(ctx context.Context, m *Manifest, e *Entry) error {
	for attempt := 0; ; attempt++ {
		c, err := s.eng.Inspect(ctx, e.Container)
		if errors.Is(err, engine.ErrNotFound) {
			e.State, e.Error = StateGone, "the container no longer exists"
			return s.write(*m)
		}
		if err != nil {
			return fmt.Errorf("checkpoint %s: %w", e.Name, err)
		}
		if !c.Running {
			if !c.Checkpointed {
				e.State, e.Error = StateGone, "it stopped before it was saved ("+c.State+")"
				return s.write(*m)
			}
			s.log.Info("resuming a container an interrupted save stopped", "container", e.Name)
			if err := s.eng.Resume(ctx, c.ID); err != nil {
				return fmt.Errorf("resume %s after an interrupted save: %w", e.Name, err)
			}
		}
		path := filepath.Join(s.saveDir(), e.ID+".tar")
		w, err := createHashed(path)
		if err != nil {
			return fmt.Errorf("checkpoint %s: %w", e.Name, err)
		}
		st, err := s.eng.Checkpoint(ctx, c.ID, pause.Writer(ctx, pause.RebootSave+"."+e.Name, w), // test builds wait there
			engine.CheckpointOptions{Keep: true, TCPEstablished: e.TCPEstablished})
		if err != nil {
			w.abort()
			// The engine may be finishing a checkpoint an earlier run of
			// this agent started: it stops the container, and this one
			// then finds it not running. Take it again.
			if ctx.Err() == nil && attempt < 2 {
				if now, ierr := s.eng.Inspect(ctx, c.ID); ierr == nil && !now.Running && now.Checkpointed {
					continue
				}
			}
			s.resumeIfStopped(c.ID, e.Name)
			return fmt.Errorf("checkpoint %s: %w", e.Name, err)
		}
		size, sum, err := w.commit()
		if err != nil {
			s.resumeIfStopped(c.ID, e.Name)
			return fmt.Errorf("store checkpoint of %s: %w", e.Name, err)
		}
		e.File, e.Size, e.SHA256, e.State, e.SavedAt, e.Checkpoint = filepath.Base(path), size, sum, StateSaved, s.cfg.Now().UTC(), st
		e.Container = c.ID
		if err := s.write(*m); err != nil {
			s.resumeIfStopped(c.ID, e.Name)
			return err
		}
		s.log.Info("saved for the reboot", "container", e.Name, "bytes", size, "frozen", st.FrozenTime, "duration", st.Duration)
		return nil
	}
}

// resumeIfStopped runs a container again that a failed checkpoint left
// stopped with a kept checkpoint: a failed save never loses a container.
func (s *Store) resumeIfStopped(id, name string) {
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.StepTimeout)
	defer cancel()
	c, err := s.eng.Inspect(ctx, id)
	if err != nil || c.Running || !c.Checkpointed {
		return
	}
	if err := s.eng.Resume(ctx, id); err != nil {
		s.log.Error("could not resume after a failed checkpoint", "container", name, "err", err)
	}
}

// removeSaved removes a saved container, so that nothing starts a fresh
// copy of it after the boot. A failure is not fatal: the restore removes a
// stopped copy it finds.
func (s *Store) removeSaved(ctx context.Context, m *Manifest, e *Entry) {
	if err := s.eng.Remove(ctx, e.Container); err != nil && !errors.Is(err, engine.ErrNotFound) {
		s.log.Warn("could not remove a saved container; the restore will", "container", e.Name, "err", err)
		return
	}
	e.Removed = true
	if err := s.write(*m); err != nil {
		s.log.Warn("record removal", "container", e.Name, "err", err)
	}
}

// Restore brings back every saved container, highest priority first, and
// carries on a restore an earlier run left unfinished. A container whose
// restore fails is kept (see RetryKept) and reported; the others go on.
// When ctx ends it returns at once; the next call carries on.
func (s *Store) Restore(ctx context.Context, report func(Progress)) (Result, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if report == nil {
		report = func(Progress) {}
	}
	start := s.cfg.Now()
	var res Result
	m, ok, err := s.load()
	if err != nil || !ok {
		return res, err
	}
	// Right after a boot the engine may not answer yet (socket activation,
	// a daemon still starting): that is not a failed restore.
	if err := s.waitEngine(ctx); err != nil {
		return res, err
	}
	for i := range m.Entries {
		e := &m.Entries[i]
		if e.State == StatePending {
			e.State = StateUnsaved // a save called off: it never stopped
		}
		if e.State != StateSaved && e.State != StateRestoring {
			continue
		}
		if err := ctx.Err(); err != nil {
			return res, err
		}
		e.State = StateRestoring
		if err := s.write(m); err != nil {
			return res, err
		}
		c, st, err := s.restoreEntry(ctx, s.saveDir(), *e)
		if err != nil && ctx.Err() != nil {
			return res, ctx.Err() // stopping: the next start carries on
		}
		if err != nil {
			e.State, e.Error = StateFailed, err.Error()
			if kerr := s.keep(*e); kerr != nil {
				e.Error += "; keeping the checkpoint failed too: " + kerr.Error()
			}
			s.cfg.Metrics.restore(false)
			res.Failed = append(res.Failed, *e)
			s.log.Error("local restore failed; checkpoint kept", "container", e.Name, "checkpoint", e.ID, "err", err)
			report(Progress{Step: StepRestoreFailed, Entry: *e, Err: err})
		} else {
			e.State, e.RestoredAt, e.Restore, e.Container = StateRestored, s.cfg.Now().UTC(), st, c.ID
			_ = os.Remove(filepath.Join(s.saveDir(), e.File))
			s.cfg.Metrics.restore(true)
			res.Restored = append(res.Restored, *e)
			s.log.Info("restored after the reboot", "container", e.Name, "bytes", e.Size, "duration", st.Duration)
			report(Progress{Step: StepRestored, Entry: *e})
		}
		if err := s.write(m); err != nil {
			return res, err
		}
	}
	res.Duration = s.cfg.Now().Sub(start)
	s.cfg.Metrics.kept(s.countKept())
	if !m.unresolved() {
		if err := os.RemoveAll(s.saveDir()); err != nil {
			s.log.Warn("clean up the local save", "err", err)
		}
	}
	return res, nil
}

// restoreEntry restores e from dir (save/ or a kept checkpoint's
// directory) and checks the result against e.
func (s *Store) restoreEntry(ctx context.Context, dir string, e Entry) (engine.Container, engine.Stats, error) {
	// A restore cut short may have finished after all, or left a stopped
	// copy; a save whose removal failed left one too.
	if c, err := s.eng.Inspect(ctx, e.Container); err == nil {
		if c.Running {
			if why := mismatch(c, e); why != "" {
				return c, engine.Stats{}, fmt.Errorf("restore %s: a different container runs as %s here: %s", e.Name, short(e.Container), why)
			}
			return c, engine.Stats{}, nil
		}
		if err := s.eng.Remove(ctx, c.ID); err != nil && !errors.Is(err, engine.ErrNotFound) {
			return c, engine.Stats{}, fmt.Errorf("restore %s: remove the stopped copy first: %w", e.Name, err)
		}
	}
	if c, err := s.eng.Inspect(ctx, e.Name); err == nil {
		return engine.Container{}, engine.Stats{}, fmt.Errorf("restore %s: another container (%s, %s) has that name here", e.Name, short(c.ID), c.State)
	}
	if err := s.ensureImage(ctx, dir, e); err != nil {
		return engine.Container{}, engine.Stats{}, err
	}
	r, err := openVerified(filepath.Join(dir, e.File), e.Size, e.SHA256)
	if err != nil {
		return engine.Container{}, engine.Stats{}, fmt.Errorf("restore %s: %w", e.Name, err)
	}
	defer r.Close()
	c, st, err := s.eng.Restore(ctx, pause.Reader(ctx, pause.RebootRestore+"."+e.Name, r), // test builds wait there
		engine.RestoreOptions{TCPEstablished: e.TCPEstablished, Local: true})
	if err != nil {
		// An engine still finishing a restore of an earlier run refuses
		// this one by name; its copy counts if it runs and matches.
		if now, ierr := s.eng.Inspect(ctx, e.Container); ierr == nil && now.Running && mismatch(now, e) == "" {
			return now, st, nil
		}
		return c, st, err // the engine names the container
	}
	if why := mismatch(c, e); why != "" || !c.Running {
		if why == "" {
			why = "it is " + c.State
		}
		if rerr := s.eng.Remove(context.WithoutCancel(ctx), c.ID); rerr != nil {
			s.log.Warn("remove a restored container that does not match", "container", c.ID, "err", rerr)
		}
		return c, st, fmt.Errorf("restore %s: the restored container does not match the manifest: %s", e.Name, why)
	}
	return c, st, nil
}

// mismatch says how c differs from what e recorded, or "".
func mismatch(c engine.Container, e Entry) string {
	switch {
	case c.ID != e.Container:
		return fmt.Sprintf("ID %s, the manifest says %s", short(c.ID), short(e.Container))
	case e.ImageID != "" && c.ImageID != "" && strings.TrimPrefix(c.ImageID, "sha256:") != strings.TrimPrefix(e.ImageID, "sha256:"):
		return fmt.Sprintf("image %s, the manifest says %s", short(c.ImageID), short(e.ImageID))
	}
	return ""
}

// ensureImage loads the entry's saved image when the engine lacks it.
func (s *Store) ensureImage(ctx context.Context, dir string, e Entry) error {
	if e.ImageID == "" {
		return nil
	}
	if ok, err := s.eng.HasImage(ctx, e.ImageID); err == nil && ok {
		return nil
	}
	if e.ImageFile == "" {
		return fmt.Errorf("restore %s: image %s is missing and was not saved", e.Name, short(e.ImageID))
	}
	r, err := openVerified(filepath.Join(dir, e.ImageFile), e.ImageSize, e.ImageSHA256)
	if err != nil {
		return fmt.Errorf("restore %s: image: %w", e.Name, err)
	}
	defer r.Close()
	if _, err := s.eng.LoadImage(ctx, r); err != nil {
		return fmt.Errorf("restore %s: load image %s: %w", e.Name, short(e.ImageID), err)
	}
	s.log.Info("loaded a saved image", "image", short(e.ImageID), "container", e.Name)
	return nil
}

// keep moves a failed entry's archive and image to kept/<id>/.
func (s *Store) keep(e Entry) error {
	dir := filepath.Join(s.keptDir(), e.ID)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if err := os.Rename(filepath.Join(s.saveDir(), e.File), filepath.Join(dir, "checkpoint.tar")); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	e.File = "checkpoint.tar"
	if e.ImageFile != "" {
		// Other entries may share the image file: link, or copy.
		src, dst := filepath.Join(s.saveDir(), e.ImageFile), filepath.Join(dir, "image.tar")
		if err := os.Link(src, dst); err != nil && !errors.Is(err, os.ErrExist) {
			if err := copyFile(src, dst); err != nil {
				return err
			}
		}
		e.ImageFile = "image.tar"
	}
	e.Host = s.cfg.Host
	return writeJSON(filepath.Join(dir, "entry.json"), e)
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Sync(); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// ErrNoKept: no kept checkpoint has that ID here.
var ErrNoKept = errors.New("no kept checkpoint")

// Kept lists the kept checkpoints, oldest first.
func (s *Store) Kept() ([]Entry, error) {
	ents, err := os.ReadDir(s.keptDir())
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []Entry
	for _, d := range ents {
		var e Entry
		if ok, err := readJSON(filepath.Join(s.keptDir(), d.Name(), "entry.json"), &e); err == nil && ok {
			out = append(out, e)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].SavedAt.Before(out[j].SavedAt) })
	return out, nil
}

func (s *Store) countKept() int {
	ks, _ := s.Kept()
	return len(ks)
}

// validID accepts the IDs entryID makes, and nothing that leaves kept/.
func validID(id string) bool {
	return id != "" && !strings.HasPrefix(id, ".") && !unsafeChars.MatchString(id) && len(id) <= 200
}

// RetryKept restores a kept checkpoint in place, with its own name and
// identity, verified against its record. On success the checkpoint is
// deleted; on failure it stays for another try.
func (s *Store) RetryKept(ctx context.Context, id string) (engine.Container, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !validID(id) {
		return engine.Container{}, fmt.Errorf("%w: %q", ErrNoKept, id)
	}
	dir := filepath.Join(s.keptDir(), id)
	var e Entry
	ok, err := readJSON(filepath.Join(dir, "entry.json"), &e)
	if err != nil {
		return engine.Container{}, err
	}
	if !ok {
		return engine.Container{}, fmt.Errorf("%w: %s", ErrNoKept, id)
	}
	c, _, err := s.restoreEntry(ctx, dir, e)
	if err != nil {
		s.cfg.Metrics.restore(false)
		return c, fmt.Errorf("kept checkpoint %s: %w", id, err)
	}
	s.cfg.Metrics.restore(true)
	if err := os.RemoveAll(dir); err != nil {
		s.log.Warn("remove a kept checkpoint after its restore", "checkpoint", id, "err", err)
	}
	s.cfg.Metrics.kept(s.countKept())
	s.log.Info("kept checkpoint restored", "checkpoint", id, "container", e.Name)
	return c, nil
}

// waitEngine waits until the engine answers, retrying with backoff until
// ctx ends.
func (s *Store) waitEngine(ctx context.Context) error {
	wait := 100 * time.Millisecond
	for attempt := 0; ; attempt++ {
		_, err := s.eng.List(ctx)
		if err == nil {
			return nil
		}
		if attempt == 3 {
			s.log.Warn("the engine does not answer yet; the restore waits for it", "err", err)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
		wait = min(2*wait, 5*time.Second)
	}
}
