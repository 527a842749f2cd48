package copies

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/edgemigrate/orchestrate/cluster"
	"github.com/edgemigrate/orchestrate/engine"
	"github.com/edgemigrate/orchestrate/policy"
)

// RestoreRequest is POST /v1/restore (and the query of
// /v1/restore/archive).
type RestoreRequest struct {
	// Source is a kept checkpoint's ID or a snapshot's ID; with Image, it
	// is the checkpoint image's reference.
	Source string `json:"source"`
	Host   string `json:"host,omitempty"`
	Name   string `json:"name,omitempty"`
	Count  int    `json:"count,omitempty"`
	// Image: Source is a checkpoint image (orchestrate checkpoint --image),
	// on a host's Podman or in a registry. TLSVerify (default true) applies
	// to a pull.
	Image     bool  `json:"image,omitempty"`
	TLSVerify *bool `json:"tls_verify,omitempty"`
	// ImageHost is where the checkpoint image is (pulled when missing):
	// Host when set, else the agent the operator talks to, which fills it
	// in before the request goes to the leader.
	ImageHost string `json:"image_host,omitempty"`
	// Archive is an archive the operator uploaded (/v1/restore/archive),
	// held by the agent that took the upload until the copies started.
	Archive *StagedArchive `json:"archive,omitempty"`
}

// StagedArchive names an uploaded archive a host holds for copies.
type StagedArchive struct {
	Host string `json:"host"`
	ID   string `json:"id"`
}

// RestoreResult answers a restore.
type RestoreResult struct {
	Source string `json:"source"`
	Kind   string `json:"kind"` // kept, snapshot, archive
	// Restored is a kept checkpoint brought back as itself, on Host.
	Restored *engine.Container `json:"restored,omitempty"`
	Host     string            `json:"host,omitempty"`
	Copies   []Copy            `json:"copies,omitempty"`
	Pushes   []PushResult      `json:"pushes,omitempty"`
	// Error is set when some copies started and then one failed.
	Error string `json:"error,omitempty"`
}

// Kept is one checkpoint kept after a failed local restore, as a host's
// GET /v1/agent/checkpoints lists it.
type Kept struct {
	ID   string `json:"id"`
	Name string `json:"name"`
}

// UploadMux is a Mux that also takes routes whose body is a file
// (cluster.Cluster.HandleUpload).
type UploadMux interface {
	Mux
	HandleUpload(pattern string, limit int64, h func(http.ResponseWriter, *http.Request))
}

// Service serves `orchestrate restore`. Any agent takes the request; the
// leader carries it out: it resolves the source, checks and places the
// copies, and orders the holder's and the targets' steps, each signed with
// its term key (StepClient), which the hosts verify (Agent.Register). An
// uploaded archive is staged on the agent that took the upload, which then
// hands the request to the leader naming it (RestoreRequest.Archive) and
// drops it once the leader answered.
type Service struct {
	c     Cluster
	local *Agent
	step  time.Duration
}

// NewService returns the operator side; local is this host's Agent (it
// holds the archives uploaded here).
func NewService(c Cluster, local *Agent) *Service {
	return &Service{c: c, local: local, step: local.cfg.StepTimeout}
}

// Register adds the operator routes:
//
//	POST /v1/restore          RestoreRequest -> RestoreResult (carried out by the leader)
//	POST /v1/restore/archive  ?host=&name=&count=, body: a checkpoint archive -> RestoreResult
//
// The archive route is an upload (UploadMux): its body may be up to
// maxArchive bytes.
func (s *Service) Register(mux UploadMux, maxArchive int64) {
	mux.HandleFunc("POST /v1/restore", func(w http.ResponseWriter, r *http.Request) {
		var req RestoreRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.Source == "" {
			cluster.WriteError(w, fmt.Errorf("%w: want {\"source\": ID}", cluster.ErrInvalid))
			return
		}
		if req.Image && req.ImageHost == "" {
			// Without --host, the image is looked for on the agent the
			// operator talks to.
			req.ImageHost = firstNonEmpty(req.Host, s.c.Name())
		}
		s.viaLeader(w, r.Context(), req)
	})
	mux.HandleUpload("POST /v1/restore/archive", maxArchive, func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		req := RestoreRequest{Source: "archive", Host: q.Get("host"), Name: q.Get("name")}
		if c := q.Get("count"); c != "" {
			n, err := strconv.Atoi(c)
			if err != nil {
				cluster.WriteError(w, fmt.Errorf("%w: count %q", cluster.ErrInvalid, c))
				return
			}
			req.Count = n
		}
		ref := Ref{Kind: KindUpload, ID: "upload-" + newID()}
		if _, err := s.local.Stage(ref.ID, r.Body); err != nil {
			cluster.WriteError(w, err)
			return
		}
		defer func() { _ = s.local.drop(ref) }()
		req.Archive = &StagedArchive{Host: s.c.Name(), ID: ref.ID}
		s.viaLeader(w, r.Context(), req)
	})
}

// viaLeader carries req out here when this agent leads, and otherwise
// hands it to the leader (POST /v1/restore) and relays the answer.
func (s *Service) viaLeader(w http.ResponseWriter, ctx context.Context, req RestoreRequest) {
	if s.c.IsLeader() {
		s.reply(w, ctx, req)
		return
	}
	cl, err := s.c.LeaderClient()
	var res RestoreResult
	if err == nil {
		err = cl.Do(ctx, http.MethodPost, "/v1/restore", req, &res)
	}
	if err != nil {
		cluster.WriteError(w, err)
		return
	}
	cluster.WriteJSON(w, http.StatusOK, res)
}

func (s *Service) reply(w http.ResponseWriter, ctx context.Context, req RestoreRequest) {
	res, err := s.Restore(ctx, req)
	if err != nil && len(res.Copies) == 0 {
		if errors.Is(err, ErrClash) {
			err = fmt.Errorf("%w: %w", cluster.ErrInvalid, err)
		}
		cluster.WriteError(w, err)
		return
	}
	if err != nil {
		res.Error = err.Error()
	}
	cluster.WriteJSON(w, http.StatusOK, res)
}

func newID() string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// Restore resolves req and restores it: a kept checkpoint in place,
// anything else as copies. It runs on the leader: the steps it orders on
// other hosts carry its signature, and a host refuses them otherwise.
func (s *Service) Restore(ctx context.Context, req RestoreRequest) (RestoreResult, error) {
	res := RestoreResult{Source: req.Source}
	if !s.c.IsLeader() {
		return res, fmt.Errorf("%w: restores are carried out by the leader", cluster.ErrNotLeader)
	}
	var holder, origin string
	var ref Ref
	switch {
	case req.Archive != nil:
		if req.Archive.Host == "" || !validID(req.Archive.ID) {
			return res, fmt.Errorf("%w: archive %+v", cluster.ErrInvalid, *req.Archive)
		}
		res.Kind, holder, ref = "archive", req.Archive.Host, Ref{Kind: KindUpload, ID: req.Archive.ID}
	case req.Image:
		// The image's host turns it into an archive it holds; from there
		// it goes like an uploaded archive.
		holder = firstNonEmpty(req.ImageHost, req.Host, s.c.Name())
		var staged Ref
		if err := s.call(ctx, holder, "/v1/agent/copies/stage-image", StageImageRequest{Image: req.Source, TLSVerify: req.TLSVerify}, &staged, 0); err != nil {
			return res, fmt.Errorf("checkpoint image %s on %s: %w", req.Source, holder, err)
		}
		defer func() {
			_ = s.call(context.WithoutCancel(ctx), holder, "/v1/agent/copies/drop", HolderRequest{Ref: staged}, nil, s.step)
		}()
		res.Kind, ref = "image", staged
	default:
		// A kept checkpoint first: its IDs never look like snapshot IDs.
		if host, ok, err := s.findKept(ctx, req.Source, req.Host); err != nil {
			return res, err
		} else if ok {
			return s.restoreKept(ctx, req, host)
		}
		src, err := s.resolve(ctx, req.Source)
		if err != nil {
			return res, err
		}
		res.Kind, holder, origin, ref = src.ref.Kind, src.holder, src.origin, src.ref
	}
	var facts Facts
	if err := s.call(ctx, holder, "/v1/agent/copies/inspect", HolderRequest{Ref: ref}, &facts, s.step); err != nil {
		return res, fmt.Errorf("inspect %s on %s: %w", req.Source, holder, err)
	}
	if facts.Engine == "" {
		facts.Engine = s.engineOf(firstNonEmpty(origin, holder))
	}
	hosts, containers := s.view(ctx)
	plan, err := MakePlan(PlanInput{Facts: facts, Host: req.Host, Name: req.Name, Count: req.Count, Hosts: hosts, Containers: containers})
	if err != nil {
		return res, err
	}
	for _, p := range plan {
		if err := s.ensureImage(ctx, facts.ImageID, p.Host, hosts); err != nil {
			return res, err
		}
	}
	// Each target gets the archive once, in parallel; then starts its copies.
	var mu sync.Mutex
	var wg sync.WaitGroup
	var errs []error
	for _, p := range plan {
		wg.Add(1)
		go func(p Placement) {
			defer wg.Done()
			spool := "copy-" + newID() + ".tar"
			var pr PushResult
			err := s.call(ctx, holder, "/v1/agent/copies/push", HolderRequest{Ref: ref, TargetHost: p.Host, Spool: spool}, &pr, 0)
			var cs []Copy
			if err == nil {
				err = s.call(ctx, p.Host, "/v1/agent/copies/restore", StartRequest{Spool: spool, Size: facts.Size, SHA256: facts.SHA256, Names: p.Names, ImageID: facts.ImageID}, &cs, 0)
			}
			mu.Lock()
			defer mu.Unlock()
			res.Pushes = append(res.Pushes, pr)
			res.Copies = append(res.Copies, cs...)
			if err != nil {
				errs = append(errs, fmt.Errorf("copies on %s: %w", p.Host, err))
			}
		}(p)
	}
	wg.Wait()
	var names []string
	for _, c := range res.Copies {
		names = append(names, c.Name+"@"+c.Host)
	}
	err = errors.Join(errs...)
	result := fmt.Sprintf("%d of %s started: %s", len(res.Copies), req.Source, strings.Join(names, ", "))
	if err != nil {
		result += "; " + err.Error()
	}
	s.event(ctx, "", "copies", result)
	return res, err
}

// source is an archive some host holds.
type source struct {
	ref    Ref
	holder string // the host that keeps the file and pushes it
	origin string // where the container ran, when known
}

// resolve names the holder of a stored archive. Snapshots live on their
// store host. OCI checkpoint images (engine/archive, being added) resolve
// here too: a source naming one becomes a Ref of a new kind whose holder
// inspects and pushes it like a snapshot (Agent.resolve maps the kind to
// the file).
func (s *Service) resolve(ctx context.Context, id string) (source, error) {
	if rec, err := s.snapshot(ctx, id); err == nil {
		return source{ref: Ref{Kind: KindSnapshot, ID: rec.ID}, holder: rec.StoreHost, origin: rec.Host}, nil
	}
	return source{}, fmt.Errorf("%w: %s is neither a kept checkpoint nor a snapshot (orchestrate snapshots; orchestrate reboot --status)", cluster.ErrNotFound, id)
}

// restoreKept brings a kept checkpoint back as itself on the host that
// keeps it.
func (s *Service) restoreKept(ctx context.Context, req RestoreRequest, host string) (RestoreResult, error) {
	res := RestoreResult{Source: req.Source, Kind: "kept", Host: host}
	if req.Name != "" || req.Count > 1 {
		return res, fmt.Errorf("%w: %s is a checkpoint kept after a failed restore: it comes back as itself (no --name or --count)", cluster.ErrInvalid, req.Source)
	}
	var c engine.Container
	if err := s.call(ctx, host, "/v1/agent/checkpoints/restore", map[string]string{"id": req.Source}, &c, 0); err != nil {
		return res, fmt.Errorf("restore kept checkpoint %s on %s: %w", req.Source, host, err)
	}
	res.Restored = &c
	s.event(ctx, host, "kept checkpoint restored", fmt.Sprintf("%s as %s", req.Source, c.Name))
	return res, nil
}

func firstNonEmpty(s ...string) string {
	for _, x := range s {
		if x != "" {
			return x
		}
	}
	return ""
}

// findKept finds the host keeping checkpoint id: host when given, else
// every alive host is asked.
func (s *Service) findKept(ctx context.Context, id, host string) (string, bool, error) {
	var hosts []string
	for _, m := range s.c.Members() {
		if m.Status == cluster.StatusAlive && m.Engine != "" && m.Engine != "none" && (host == "" || m.Name == host) {
			hosts = append(hosts, m.Name)
		}
	}
	for _, h := range hosts {
		var kept []Kept
		if err := s.get(ctx, h, "/v1/agent/checkpoints", &kept); err != nil {
			continue // a host that cannot answer keeps nothing we can restore now
		}
		for _, k := range kept {
			if k.ID == id {
				return h, true, nil
			}
		}
	}
	return "", false, nil
}

func (s *Service) engineOf(host string) string {
	for _, m := range s.c.Members() {
		if m.Name == host {
			return m.Engine
		}
	}
	return ""
}

// view returns the hosts as placement sees them and each alive host's
// containers.
func (s *Service) view(ctx context.Context) ([]policy.HostLoad, map[string][]engine.Container) {
	var hosts []policy.HostLoad
	containers := map[string][]engine.Container{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, m := range s.c.Members() {
		hosts = append(hosts, policy.HostLoad{Name: m.Name, Alive: m.Status == cluster.StatusAlive, Cordoned: m.Cordoned,
			Engine: m.Engine, CRIUVersion: m.CRIUVersion, Labels: m.Labels, MemoryCapacity: m.MemoryTotal, MemoryUsed: m.MemoryUsed})
		if m.Status != cluster.StatusAlive || m.Engine == "" || m.Engine == "none" {
			continue
		}
		wg.Add(1)
		go func(name string) {
			defer wg.Done()
			var cs []engine.Container
			if err := s.get(ctx, name, "/v1/containers", &cs); err != nil {
				return
			}
			mu.Lock()
			containers[name] = cs
			mu.Unlock()
		}(m.Name)
	}
	wg.Wait()
	// A host whose containers are unknown cannot be checked for clashes.
	for i := range hosts {
		if _, ok := containers[hosts[i].Name]; !ok {
			hosts[i].Alive = false
		}
	}
	return hosts, containers
}

// ensureImage sends the image to host when it lacks it, from a host that
// has it: the leader has that host upload the image into the target's
// spool (resumable, verified) and then has the target load exactly the
// file the upload verified, both as signed steps.
func (s *Service) ensureImage(ctx context.Context, imageID, host string, hosts []policy.HostLoad) error {
	if imageID == "" {
		return nil
	}
	has := func(h string) bool {
		var out struct {
			Present bool `json:"present"`
		}
		return s.read(ctx, h, http.MethodPost, "/v1/agent/has-image", map[string]string{"image": imageID}, &out) == nil && out.Present
	}
	if has(host) {
		return nil
	}
	for _, h := range hosts {
		if h.Name == host || !h.Alive || !has(h.Name) {
			continue
		}
		var f SpooledFile
		err := s.call(ctx, h.Name, "/v1/agent/copies/push-image", ImagePushRequest{Image: imageID, TargetHost: host, Spool: "copy-image-" + newID() + ".tar"}, &f, 0)
		if err == nil {
			err = s.call(ctx, host, "/v1/agent/copies/load-image", ImageLoadRequest{Image: imageID, SpooledFile: f}, nil, 0)
		}
		if err != nil {
			return fmt.Errorf("send image %s from %s to %s: %w", short(imageID), h.Name, host, err)
		}
		return nil
	}
	return fmt.Errorf("%w: no alive host has image %s for %s", ErrClash, short(imageID), host)
}

func short(id string) string {
	id = strings.TrimPrefix(id, "sha256:")
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// call orders a step on host's agent, signed as this leader's;
// timeout 0 means none (transfers, restores).
func (s *Service) call(ctx context.Context, host, path string, in, out any, timeout time.Duration) error {
	cl, err := s.c.StepClient(host)
	if err != nil {
		return err
	}
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	return cl.Do(ctx, http.MethodPost, path, in, out)
}

// read asks host's agent something that changes nothing (within the step
// timeout).
func (s *Service) read(ctx context.Context, host, method, path string, in, out any) error {
	cl, err := s.c.PeerClient(host)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, s.step)
	defer cancel()
	return cl.Do(ctx, method, path, in, out)
}

func (s *Service) get(ctx context.Context, host, path string, out any) error {
	return s.read(ctx, host, http.MethodGet, path, nil, out)
}

func (s *Service) event(ctx context.Context, host, action, result string) {
	at := time.Now().UTC()
	if host == "" {
		host = s.c.Name()
	}
	_ = s.c.AppendEvent(ctx, cluster.Event{ID: cluster.EventID(host, "restore", action, result, at.Format(time.RFC3339Nano)), Kind: "restore",
		Host: host, At: at, Message: action + ": " + result, Data: map[string]string{"action": action, "result": result}})
}

// snapshot reads a snapshot record from this agent's replica, or from the
// leader when the replica has not caught up with a snapshot just taken.
func (s *Service) snapshot(ctx context.Context, id string) (cluster.SnapshotRecord, error) {
	rec, err := s.c.Snapshot(id)
	if err == nil || !errors.Is(err, cluster.ErrNotFound) {
		return rec, err
	}
	cl, lerr := s.c.LeaderClient()
	if lerr != nil {
		return rec, err
	}
	ctx, cancel := context.WithTimeout(ctx, s.step)
	defer cancel()
	if lerr := cl.Do(ctx, http.MethodGet, "/v1/snapshots/"+id, nil, &rec); lerr != nil {
		return rec, err
	}
	return rec, nil
}
