package copies

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/edgemigrate/orchestrate/cluster"
	"github.com/edgemigrate/orchestrate/engine"
	"github.com/edgemigrate/orchestrate/engine/enginetest"
	"github.com/edgemigrate/orchestrate/internal/linkcut"
	"github.com/edgemigrate/orchestrate/policy"
)

func TestMakePlan(t *testing.T) {
	hosts := []policy.HostLoad{
		{Name: "h1", Alive: true, Engine: "podman", MemoryCapacity: 8 << 30},
		{Name: "h2", Alive: true, Engine: "podman", MemoryCapacity: 8 << 30},
		{Name: "h3", Alive: true, Engine: "docker", MemoryCapacity: 8 << 30},
		{Name: "h4", Alive: true, Cordoned: true, Engine: "podman", MemoryCapacity: 8 << 30},
	}
	orig := engine.Container{ID: "orig", Name: "web", Running: true}
	ctrs := map[string][]engine.Container{"h1": {orig}, "h2": {{ID: "x", Name: "taken", State: "exited"}}, "h3": nil, "h4": nil}
	bridge := Facts{Engine: "podman", Name: "web", Container: "orig", MemoryBytes: 64 << 20, Listening: []string{"0.0.0.0:8080"}}
	hostNet := bridge
	hostNet.HostNetwork = true
	for _, tc := range []struct {
		name  string
		in    PlanInput
		want  string // host:names;... or the refusal's words
		clash bool
	}{
		{"one copy, default name", PlanInput{Facts: bridge}, "h2:web-copy", false},
		{"three spread over the podman hosts", PlanInput{Facts: bridge, Name: "cp", Count: 3}, "h2:cp-1,cp-3;h1:cp-2", false},
		{"on a chosen host", PlanInput{Facts: bridge, Host: "h1", Count: 2}, "h1:web-copy-1,web-copy-2", false},
		{"name taken on the target", PlanInput{Facts: bridge, Host: "h2", Name: "taken"}, "already exists on h2", true},
		{"wrong engine", PlanInput{Facts: bridge, Host: "h3"}, "engine docker", true},
		{"cordoned", PlanInput{Facts: bridge, Host: "h4"}, "cordoned", true},
		{"unknown host", PlanInput{Facts: bridge, Host: "h9"}, "no host h9", true},
		{"bad name", PlanInput{Facts: bridge, Name: "a b"}, "not a valid container name", true},
		{"established TCP", PlanInput{Facts: Facts{Engine: "podman", Name: "db", Established: []string{"10.0.0.1:5432 -> 10.0.0.2:40000"}}}, "established TCP", true},
		{"host network: one per host, not next to the original", PlanInput{Facts: hostNet}, "h2:web-copy", false},
		{"host network: two do not fit", PlanInput{Facts: hostNet, Count: 2}, "one copy per host", true},
		{"host network: next to the original", PlanInput{Facts: hostNet, Host: "h1"}, "the original runs on h1", true},
		{"host network: two on one host", PlanInput{Facts: hostNet, Host: "h2", Count: 2}, "share one address", true},
		{"too many", PlanInput{Facts: bridge, Count: 1000}, "at most", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.in.Hosts, tc.in.Containers = hosts, ctrs
			plan, err := MakePlan(tc.in)
			if tc.clash {
				if !errors.Is(err, ErrClash) || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("err = %v, want a clash about %q", err, tc.want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var parts []string
			for _, p := range plan {
				parts = append(parts, p.Host+":"+strings.Join(p.Names, ","))
			}
			if got := strings.Join(parts, ";"); got != tc.want {
				t.Fatalf("plan %s, want %s", got, tc.want)
			}
		})
	}
}

type fakeCluster struct{ members []cluster.Member }

func (f fakeCluster) Name() string                               { return "h1" }
func (f fakeCluster) Members() []cluster.Member                  { return f.members }
func (f fakeCluster) PeerClient(string) (*cluster.Client, error) { return nil, cluster.ErrNotFound }
func (f fakeCluster) Snapshot(string) (cluster.SnapshotRecord, error) {
	return cluster.SnapshotRecord{}, cluster.ErrNotFound
}
func (f fakeCluster) AppendEvent(context.Context, cluster.Event) error {
	return nil
}
func (f fakeCluster) LeaderClient() (*cluster.Client, error) { return nil, cluster.ErrNoLeader }
func (f fakeCluster) IsLeader() bool                         { return false }
func (f fakeCluster) StepClient(string) (*cluster.Client, error) {
	return nil, cluster.ErrNotFound
}
func (f fakeCluster) LeaderStep(h http.HandlerFunc) http.HandlerFunc { return h }

// A stored checkpoint pushed to the host that starts a copy survives a
// link cut at half way: the upload resumes where it stopped and sends only
// the rest, and the copy starts from bytes verified end to end.
func TestPushResumesAfterCutAtHalf(t *testing.T) {
	dir := t.TempDir()
	src := enginetest.NewFake()
	c := src.Run("web", "img", 64<<20, nil)
	mem, _ := src.Memory(c.ID)
	var archive bytes.Buffer
	if _, err := src.Checkpoint(context.Background(), c.ID, &archive, engine.CheckpointOptions{LeaveRunning: true}); err != nil {
		t.Fatal(err)
	}
	size := int64(archive.Len())
	pair := linkcut.NewPair(t, filepath.Join(dir, "h2"), size/2)
	fc := fakeCluster{members: []cluster.Member{{Name: "h2", TransferAddr: pair.Addr}}}
	log := slog.New(slog.DiscardHandler)
	holder := NewAgent(Config{Host: "h1", DataDir: filepath.Join(dir, "h1"), Logger: log}, fc, nil, nil, pair.Client)
	st, err := holder.Stage("upload-1", io.NopCloser(&archive))
	if err != nil {
		t.Fatal(err)
	}
	ref := Ref{Kind: KindUpload, ID: "upload-1"}
	facts, err := holder.inspect(context.Background(), ref)
	if err != nil || facts.Size != size || facts.SHA256 != st.SHA256 {
		t.Fatalf("facts %+v %v", facts, err)
	}
	res, err := holder.push(context.Background(), HolderRequest{Ref: ref, TargetHost: "h2", Spool: "copy-1.tar"})
	if err != nil {
		t.Fatal(err)
	}
	sent := pair.Dialer.Written()
	t.Logf("archive %d bytes; cut after %d; resumed from %d; sent per connection %v", size, size/2, res.ResumedFrom, sent)
	if !pair.Dialer.Cut() || res.Attempts < 2 || len(sent) < 2 {
		t.Fatalf("no cut and resume: %+v, connections %v", res, sent)
	}
	if res.ResumedFrom < size*35/100 || res.Verified != "server-sha256" {
		t.Fatalf("resumed from %d of %d (%s)", res.ResumedFrom, size, res.Verified)
	}
	// Only the rest crossed the second connection (plus SSH's framing).
	rest := size - res.ResumedFrom
	if second := sent[len(sent)-1]; second > rest+rest/20+(1<<20) {
		t.Fatalf("the resumed connection sent %d bytes for the remaining %d", second, rest)
	}
	target := enginetest.NewFake()
	target.AddImage("img")
	to := NewAgent(Config{Host: "h2", DataDir: filepath.Join(dir, "h2"), Logger: log}, fc, target, pair.Server, nil)
	cs, err := to.start(context.Background(), StartRequest{Spool: "copy-1.tar", Size: size, SHA256: st.SHA256, Names: []string{"web-copy"}})
	if err != nil || len(cs) != 1 {
		t.Fatalf("start: %+v %v", cs, err)
	}
	got, _ := target.Memory(cs[0].ID)
	if !bytes.Equal(got, mem) || cs[0].ID == c.ID || cs[0].Name != "web-copy" {
		t.Fatalf("copy %+v: memory equal %v", cs[0], bytes.Equal(got, mem))
	}
	// The spooled archive is gone, and a corrupted one starts nothing.
	if _, err := pair.Server.OpenSpooled("copy-1.tar", size, st.SHA256); err == nil {
		t.Fatal("the spooled archive is still there")
	}
	if _, err := holder.push(context.Background(), HolderRequest{Ref: ref, TargetHost: "h2", Spool: "copy-2.tar"}); err != nil {
		t.Fatal(err)
	}
	bad := strings.Repeat("0", 64)
	if _, err := to.start(context.Background(), StartRequest{Spool: "copy-2.tar", Size: size, SHA256: bad, Names: []string{"bad-copy"}}); err == nil {
		t.Fatal("a copy started from an archive that does not match its sum")
	}
	if _, err := target.Inspect(context.Background(), "bad-copy"); !errors.Is(err, engine.ErrNotFound) {
		t.Fatalf("a failed copy left a container: %v", err)
	}
}

func TestInspectDockerArchive(t *testing.T) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	m := []byte(`{"format":1,"id":"abc","name":"web","image":"img","image_id":"sha256:1","memory_bytes":4096,"config":{"Labels":{"orchestrate.priority":"3"}},"host_config":{"NetworkMode":"host"}}`)
	_ = tw.WriteHeader(&tar.Header{Name: dockerManifestEntry, Mode: 0o600, Size: int64(len(m)), Typeflag: tar.TypeReg})
	_, _ = tw.Write(m)
	_ = tw.Close()
	path := filepath.Join(t.TempDir(), "d.tar")
	if err := os.WriteFile(path, buf.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := InspectArchive(path, int64(buf.Len()), "sum")
	if err != nil || f.Engine != "docker" || f.Container != "abc" || f.ImageID != "sha256:1" || !f.HostNetwork || len(f.Listening) != 1 || f.Labels["orchestrate.priority"] != "3" {
		t.Fatalf("%+v %v", f, err)
	}
}
