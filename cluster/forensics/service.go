package forensics

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/edgemigrate/orchestrate/cluster"
	"github.com/edgemigrate/orchestrate/cluster/migrate"
)

// ErrIncomplete: a streamed archive ended without its outcome, or with a
// failure; what was received must be discarded.
var ErrIncomplete = errors.New("checkpoint stream incomplete")

// CheckpointRequest is POST /v1/checkpoint.
type CheckpointRequest struct {
	Container string `json:"container"`
	// Host is where the container runs; empty asks every alive host.
	Host         string `json:"host,omitempty"`
	LeaveRunning bool   `json:"leave_running"`
	// Store keeps the archive in the snapshot store (StoreHost, default the
	// container's host) and answers its record; otherwise the archive is
	// the answer.
	Store     bool       `json:"store,omitempty"`
	StoreHost string     `json:"store_host,omitempty"`
	Reason    string     `json:"reason,omitempty"`
	Retention *Retention `json:"retention,omitempty"`
	// Image asks for a checkpoint image by this name instead of an
	// archive (ImageRequest): loaded on the container's host and answered
	// as an ImageResult, or, with ImageArchive, streamed as an OCI archive.
	Image        string `json:"image,omitempty"`
	ImageArchive bool   `json:"image_archive,omitempty"`
	Registry     string `json:"registry,omitempty"`
	TLSVerify    *bool  `json:"tls_verify,omitempty"`
}

// Service serves the operator routes on any agent. Those that act on a
// host (a checkpoint, in any form, and removing a snapshot) are carried out
// by the leader: any other agent forwards them there (cluster.Forward) and
// relays the answer, a streamed archive included. The leader finds the
// container's host or the snapshot's store host and orders the step with
// its signature (StepClient). Reads (records, a stored archive, grep) are
// served by any agent.
type Service struct {
	c         Cluster
	storeHost string
}

// NewService returns the operator side. storeHost is where --store keeps a
// snapshot when the request names no store host (forensics.store_host);
// empty means the container's own host.
func NewService(c Cluster, storeHost string) *Service { return &Service{c: c, storeHost: storeHost} }

// Register adds the operator routes.
func (s *Service) Register(mux Mux) {
	mux.HandleFunc("POST /v1/checkpoint", cluster.Forward(s.c, s.checkpoint))
	mux.HandleFunc("GET /v1/snapshots", func(w http.ResponseWriter, r *http.Request) {
		recs := s.c.Snapshots()
		if recs == nil {
			recs = []cluster.SnapshotRecord{}
		}
		cluster.WriteJSON(w, http.StatusOK, recs)
	})
	mux.HandleFunc("GET /v1/snapshots/{id}", func(w http.ResponseWriter, r *http.Request) {
		rec, err := s.c.Snapshot(r.PathValue("id"))
		if err != nil {
			cluster.WriteError(w, err)
			return
		}
		cluster.WriteJSON(w, http.StatusOK, rec)
	})
	mux.HandleFunc("GET /v1/snapshots/{id}/archive", s.archive)
	mux.HandleFunc("POST /v1/snapshots/grep", s.grep)
	mux.HandleFunc("DELETE /v1/snapshots/{id}", cluster.Forward(s.c, s.remove))
}

// remove asks the store host to drop a snapshot, record and file.
func (s *Service) remove(w http.ResponseWriter, r *http.Request) {
	rec, err := s.c.Snapshot(r.PathValue("id"))
	if err != nil {
		cluster.WriteError(w, err)
		return
	}
	cl, err := s.c.StepClient(rec.StoreHost)
	if err == nil {
		err = cl.Do(r.Context(), http.MethodPost, "/v1/agent/forensics/remove", RemoveRequest{ID: rec.ID}, nil)
	}
	if err != nil {
		cluster.WriteError(w, fmt.Errorf("remove snapshot %s on %s: %w", rec.ID, rec.StoreHost, err))
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// RemoveSnapshot removes a stored snapshot, its record and its file,
// through the agent at cl.
func RemoveSnapshot(ctx context.Context, cl *cluster.Client, id string) error {
	return cl.Do(ctx, http.MethodDelete, "/v1/snapshots/"+id, nil, nil)
}

// locate finds the host running the container ref (a name, an ID or an
// ID prefix of at least 12 characters). It runs on the leader and reads
// the hosts' container reports; a container the reports do not show
// (started since its host last reported, or hosts that have not reported
// yet) is looked for once more after fresh reports, as a migration's
// placement does.
func (s *Service) locate(ctx context.Context, ref string) (string, error) {
	res := s.c.PS(ctx)
	hosts := runningOn(res, ref)
	if len(hosts) == 0 {
		// Hosts that do not answer in time show in res.Errors below.
		_ = s.c.RefreshReports(ctx, nil, reportWait)
		res = s.c.PS(ctx)
		hosts = runningOn(res, ref)
	}
	switch len(hosts) {
	case 0:
		msg := fmt.Sprintf("container %s is not running on any alive host", ref)
		if len(res.Errors) > 0 {
			msg += fmt.Sprintf(" (%d hosts did not answer)", len(res.Errors))
		}
		return "", fmt.Errorf("%w: %s", cluster.ErrNotFound, msg)
	case 1:
		return hosts[0], nil
	}
	return "", fmt.Errorf("%w: %q runs on %d hosts (%s): pick one with --host", cluster.ErrInvalid, ref, len(hosts), strings.Join(hosts, ", "))
}

// runningOn returns the hosts where res shows ref running.
func runningOn(res cluster.PSResult, ref string) []string {
	var hosts []string
	for _, e := range res.Containers {
		if e.Name == ref || e.ID == ref || len(ref) >= 12 && strings.HasPrefix(e.ID, ref) {
			if e.State == "running" {
				hosts = append(hosts, e.Host)
			}
		}
	}
	return hosts
}

// reportWait bounds how long locate waits for fresh reports.
const reportWait = 3 * time.Second

func (s *Service) checkpoint(w http.ResponseWriter, r *http.Request) {
	var req CheckpointRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.Container == "" {
		cluster.WriteError(w, fmt.Errorf("%w: want {\"container\": NAME}", cluster.ErrInvalid))
		return
	}
	ctx := r.Context()
	host := req.Host
	if host == "" {
		var err error
		if host, err = s.locate(ctx, req.Container); err != nil {
			cluster.WriteError(w, err)
			return
		}
	}
	cl, err := s.c.StepClient(host)
	if err != nil {
		cluster.WriteError(w, err)
		return
	}
	if req.Image != "" {
		if req.Store {
			cluster.WriteError(w, fmt.Errorf("%w: a checkpoint image is not stored in the snapshot store", cluster.ErrInvalid))
			return
		}
		ireq := ImageRequest{Container: req.Container, LeaveRunning: req.LeaveRunning, Image: req.Image,
			Registry: req.Registry, TLSVerify: req.TLSVerify, Archive: req.ImageArchive}
		resp, err := cl.Raw(ctx, http.MethodPost, "/v1/agent/forensics/image", ireq)
		if err != nil {
			cluster.WriteError(w, err)
			return
		}
		cluster.Relay(w, resp)
		return
	}
	storeHost := req.StoreHost
	if req.Store && storeHost == "" {
		storeHost = s.storeHost
	}
	hreq := HostCheckpointRequest{Container: req.Container, LeaveRunning: req.LeaveRunning, StoreHost: storeHost, Reason: req.Reason, Retention: req.Retention}
	if req.Store {
		var rec cluster.SnapshotRecord
		if err := cl.Do(ctx, http.MethodPost, "/v1/agent/forensics/snapshot", hreq, &rec); err != nil {
			cluster.WriteError(w, err)
			return
		}
		cluster.WriteJSON(w, http.StatusOK, rec)
		return
	}
	resp, err := cl.Raw(ctx, http.MethodPost, "/v1/agent/forensics/checkpoint", hreq)
	if err != nil {
		cluster.WriteError(w, err)
		return
	}
	cluster.Relay(w, resp)
}

// archive relays a stored archive from its store host.
func (s *Service) archive(w http.ResponseWriter, r *http.Request) {
	rec, err := s.c.Snapshot(r.PathValue("id"))
	if err != nil {
		cluster.WriteError(w, err)
		return
	}
	cl, err := s.c.PeerClient(rec.StoreHost)
	if err != nil {
		cluster.WriteError(w, fmt.Errorf("snapshot %s on %s: %w", rec.ID, rec.StoreHost, err))
		return
	}
	resp, err := cl.Raw(r.Context(), http.MethodGet, "/v1/agent/forensics/file/"+rec.ID, nil)
	if err != nil {
		cluster.WriteError(w, err)
		return
	}
	cluster.Relay(w, resp)
}

// StreamCheckpoint asks the agent at cl for a checkpoint archive and
// writes it to w. It returns nil error only when the whole archive arrived
// and the host reported success; its size and sha256 are then checked
// against what the host sent.
func StreamCheckpoint(ctx context.Context, cl *cluster.Client, req CheckpointRequest, w io.Writer) (CheckpointResult, error) {
	var res CheckpointResult
	req.Store, req.Image = false, ""
	err := receiveStreamed(ctx, cl, req, w, req.Container, &res, func() (int64, string) { return res.Size, res.SHA256 })
	return res, err
}

// receiveStreamed copies the archive POST /v1/checkpoint answers for req
// to w, decodes the host's trailer into res, and checks the bytes received
// against the size and sha256 that sent reads from res. what names the
// archive in errors.
func receiveStreamed(ctx context.Context, cl *cluster.Client, req CheckpointRequest, w io.Writer, what string, res any, sent func() (int64, string)) error {
	resp, err := cl.Raw(ctx, http.MethodPost, "/v1/checkpoint", req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	n, got, err := copyHashed(w, resp.Body)
	if err != nil {
		return fmt.Errorf("%w: %s after %d bytes: %v", ErrIncomplete, what, n, err)
	}
	if err := trailerResult(resp, res, req.Container, n); err != nil {
		return err
	}
	if size, sum := sent(); n != size || got != sum {
		return fmt.Errorf("%w: received %d bytes sha256 %s, host sent %d bytes sha256 %s", ErrIncomplete, n, got, size, sum)
	}
	return nil
}

// StoreCheckpoint asks the agent at cl for a snapshot into the store.
func StoreCheckpoint(ctx context.Context, cl *cluster.Client, req CheckpointRequest) (cluster.SnapshotRecord, error) {
	var rec cluster.SnapshotRecord
	req.Store = true
	return rec, cl.Do(ctx, http.MethodPost, "/v1/checkpoint", req, &rec)
}

// Snapshots lists the snapshot records through the agent at cl.
func Snapshots(ctx context.Context, cl *cluster.Client) ([]cluster.SnapshotRecord, error) {
	var recs []cluster.SnapshotRecord
	return recs, cl.Do(ctx, http.MethodGet, "/v1/snapshots", nil, &recs)
}

// FetchSnapshot writes the stored archive of snapshot id to w, through the
// agent at cl, and checks it against the record's size and sha256.
func FetchSnapshot(ctx context.Context, cl *cluster.Client, id string, w io.Writer) (cluster.SnapshotRecord, error) {
	var rec cluster.SnapshotRecord
	if err := cl.Do(ctx, http.MethodGet, "/v1/snapshots/"+id, nil, &rec); err != nil {
		return rec, err
	}
	resp, err := cl.Raw(ctx, http.MethodGet, "/v1/snapshots/"+id+"/archive", nil)
	if err != nil {
		return rec, err
	}
	defer resp.Body.Close()
	sum := sha256.New()
	n, err := io.Copy(io.MultiWriter(w, sum), resp.Body)
	if err != nil {
		return rec, fmt.Errorf("fetch snapshot %s from %s: %w", id, rec.StoreHost, err)
	}
	if got := hex.EncodeToString(sum.Sum(nil)); n != rec.Size || got != rec.SHA256 {
		return rec, fmt.Errorf("fetch snapshot %s from %s: got %d bytes sha256 %s, recorded %d bytes sha256 %s",
			id, rec.StoreHost, n, got, rec.Size, rec.SHA256)
	}
	return rec, nil
}

// Snapshotter takes leave-running snapshots into the store on behalf of
// the cluster's own policies. The migration coordinator calls Snapshot
// before a spot evacuation moves a container, when
// policy.forensics.before_evacuation is set:
//
//	if cfg.Forensics != nil {
//		if err := cfg.Forensics.Snapshot(ctx, from, containerID, "spot evacuation"); err != nil {
//			log.Warn("forensic snapshot before evacuation", "err", err) // and move it anyway
//		}
//	}
//
// Snapshot blocks for the checkpoint and transfer (a brief freeze on the
// container's host, then the archive's transfer time) and leaves the
// container running on its host; on error nothing is stored or recorded.
// The caller decides whether a failed snapshot holds the evacuation back
// (it should not: the host is going away).
type Snapshotter struct {
	C Cluster
	// StoreHost keeps the snapshots. Empty means this agent (for the
	// coordinator: the leader), or, when this agent is the container's own
	// host, the first other alive host by name: a snapshot kept on the host
	// being evacuated would go with it.
	StoreHost string
	// Retention overrides the store host's default when non-nil.
	Retention *Retention
	// Budget bounds the snapshots the coordinator takes before an
	// evacuation (migrate.SnapshotBudgeter); zero fields take defaults.
	Budget migrate.SnapshotBudget
}

// SnapshotBudget implements migrate.SnapshotBudgeter.
func (s *Snapshotter) SnapshotBudget() migrate.SnapshotBudget { return s.Budget }

// Snapshot stores a leave-running snapshot of container on host.
func (s *Snapshotter) Snapshot(ctx context.Context, host, container, reason string) error {
	_, err := s.Take(ctx, host, container, reason)
	return err
}

func (s *Snapshotter) storeHost(host string) string {
	if s.StoreHost != "" {
		return s.StoreHost
	}
	if self := s.C.Name(); self != host {
		return self
	}
	var others []string
	for _, m := range s.C.Members() {
		if m.Name != host && m.Status == cluster.StatusAlive && m.TransferAddr != "" {
			others = append(others, m.Name)
		}
	}
	sort.Strings(others)
	if len(others) > 0 {
		return others[0]
	}
	return host
}

// Take is Snapshot that returns the record. It runs on the leader (the
// coordinator's evacuations): the host takes the snapshot only as the
// leader's signed step.
func (s *Snapshotter) Take(ctx context.Context, host, container, reason string) (cluster.SnapshotRecord, error) {
	var rec cluster.SnapshotRecord
	cl, err := s.C.StepClient(host)
	if err != nil {
		return rec, err
	}
	req := HostCheckpointRequest{Container: container, LeaveRunning: true, StoreHost: s.storeHost(host), Reason: reason, Retention: s.Retention}
	if err := cl.Do(ctx, http.MethodPost, "/v1/agent/forensics/snapshot", req, &rec); err != nil {
		return rec, fmt.Errorf("forensic snapshot of %s on %s: %w", container, host, err)
	}
	return rec, nil
}
