package migrate

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"testing"

	"github.com/edgemigrate/orchestrate/cluster"
	"github.com/edgemigrate/orchestrate/engine/enginetest"
	"github.com/edgemigrate/orchestrate/internal/linkcut"
)

// bigImages is a fake engine whose image archives carry size bytes of
// payload, so that a push is long enough to cut.
type bigImages struct {
	*enginetest.Fake
	payload []byte
	loaded  []byte
}

func (b *bigImages) ExportImage(ctx context.Context, ref string, w io.Writer) error {
	if _, err := w.Write(b.payload); err != nil {
		return err
	}
	return b.Fake.ExportImage(ctx, ref, w)
}

func (b *bigImages) LoadImage(ctx context.Context, r io.Reader) (string, error) {
	all, err := io.ReadAll(r)
	if err != nil {
		return "", err
	}
	if len(all) < len(b.payload) {
		return "", errors.New("short image archive")
	}
	b.loaded = all[:len(b.payload)]
	return b.Fake.LoadImage(ctx, bytes.NewReader(all[len(b.payload):]))
}

type imgMux struct{}

func (imgMux) HandleFunc(string, func(http.ResponseWriter, *http.Request)) {}

// An image push survives a link cut at half way: the upload resumes where
// it stopped, sends only the rest, and the target loads bytes verified end
// to end.
func TestImagePushResumesAfterCutAtHalf(t *testing.T) {
	dir := t.TempDir()
	payload := make([]byte, 48<<20)
	_, _ = rand.Read(payload)
	src := &bigImages{Fake: enginetest.NewFake(), payload: payload}
	img := src.AddImage("localhost/app:1")
	size := int64(len(payload)) + int64(len("fake-image:localhost/app:1"))
	pair := linkcut.NewPair(t, filepath.Join(dir, "target"), size/2)
	dst := &bigImages{Fake: enginetest.NewFake(), payload: make([]byte, len(payload))}
	log := slog.New(slog.DiscardHandler)
	target := NewAgent("h2", dst, nil, log)
	// The target takes the image only for a migration the cluster records
	// from the sender (the pair's client) to itself.
	target.SetAuthority(&pairAuth{rec: cluster.MigrationRecord{ID: "m1", Image: img,
		From: linkcut.ClientNode, To: "h2", Phase: Planned}})
	target.SetPrecopy(PrecopyConfig{Dir: filepath.Join(dir, "precopy")})
	target.Register(imgMux{}, pair.Server)
	source := NewAgent("h1", src, pair.Client, log)
	source.SetImageStage(filepath.Join(dir, "stage"))
	st, err := source.sendImage(context.Background(), ImageRequest{Migration: "m1", Image: img, TargetHost: "h2", TargetAddr: pair.Addr})
	if err != nil {
		t.Fatal(err)
	}
	sent := pair.Dialer.Written()
	t.Logf("image %d bytes; resumed from %d after %d attempts; sent per connection %v", st.Bytes, st.ResumedFrom, st.Attempts, sent)
	if !pair.Dialer.Cut() || st.Attempts < 2 || st.ResumedFrom < size*35/100 || st.Bytes != size {
		t.Fatalf("no cut and resume: %+v", st)
	}
	rest := size - st.ResumedFrom
	var after int64
	for _, n := range sent[1:] {
		after += n
	}
	if after > rest+rest/20+(1<<20) {
		t.Fatalf("after the cut %d bytes went for the remaining %d", after, rest)
	}
	if ok, _ := dst.HasImage(context.Background(), img); !ok || !bytes.Equal(dst.loaded, payload) {
		t.Fatal("the target did not load the image it was sent")
	}
	// The spooled file is gone once loaded, and so is the staged one.
	for _, d := range []string{pair.SpoolDir, filepath.Join(dir, "stage")} {
		if left, _ := os.ReadDir(d); len(left) != 0 {
			t.Fatalf("%s keeps %v", d, left)
		}
	}
}
