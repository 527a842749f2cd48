package migrate

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"time"

	"github.com/edgemigrate/orchestrate/transfer"
)

// KindImageFile is the stream kind that tells a target to load an image
// archive already uploaded into its spool; the stream itself is empty.
const KindImageFile = "image-file"

// Uploader sends a file into a peer's spool, resuming after a cut
// (transfer.Client).
type Uploader interface {
	Upload(ctx context.Context, peer, path, remote string) (transfer.FileStats, error)
}

// Spool is the receiving side of uploads (transfer.Server).
type Spool interface {
	OpenSpooled(name string, size int64, sum string) (io.ReadCloser, error)
	RemoveSpooled(name string) error
}

// imageFiles sends images as resumable files: an image is pushed while its
// container still runs, so staging it costs no downtime, and a cut link
// resumes the upload instead of starting the image over.
type imageFiles struct {
	stage string // under node.data_dir; "" streams images instead
	spool Spool  // this host's spool, for receiving
}

// SetImageStage makes the agent push images as resumable files staged in
// dir (under node.data_dir, root-only) instead of streams. Call before
// Register.
func (a *Agent) SetImageStage(dir string) { a.images.stage = dir }

// registerImageFiles receives images uploaded as files, when the stream
// handlers are a transfer server with a spool.
func (a *Agent) registerImageFiles(streams StreamHandlers) {
	if sp, ok := streams.(Spool); ok {
		a.images.spool = sp
		streams.Handle(KindImageFile, a.handleImageFile)
	}
}

// imageSent describes one image push.
type imageSent struct {
	Bytes       int64         `json:"bytes"`
	WireBytes   int64         `json:"wire_bytes,omitempty"`
	Attempts    int           `json:"attempts,omitempty"`
	ResumedFrom int64         `json:"resumed_from,omitempty"`
	Duration    time.Duration `json:"-"`
	DurationMS  int64         `json:"duration_ms"`
}

var unsafeName = regexp.MustCompile(`[^a-zA-Z0-9_.-]+`)

// sendImage pushes req.Image to the target: exported into a staged file,
// uploaded into the target's spool over SFTP (resumable, verified), and
// loaded there from the spool through a verifying reader. Without a stage
// directory, or a sender that can upload, it streams the image instead.
func (a *Agent) sendImage(ctx context.Context, req ImageRequest) (imageSent, error) {
	start := time.Now()
	export := func(w io.Writer) error { return a.eng.ExportImage(ctx, req.Image, w) }
	up, ok := a.sender.(Uploader)
	if !ok || a.images.stage == "" {
		_, st, err := a.sender.Stream(ctx, req.TargetAddr, transfer.StreamHeader{Kind: KindImage, ID: req.Image,
			Meta: map[string]string{"migration": req.Migration}}, export)
		return imageSent{Bytes: st.Bytes, WireBytes: st.WireBytes, Duration: st.Duration, DurationMS: st.Duration.Milliseconds()}, err
	}
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	name := "image-" + unsafeName.ReplaceAllString(short(req.Image), "_") + "-" + hex.EncodeToString(b) + ".tar"
	staged, err := transfer.StageFile(filepath.Join(a.images.stage, name), export)
	if err != nil {
		return imageSent{}, fmt.Errorf("export image %s: %w", short(req.Image), err)
	}
	defer os.Remove(staged.Path)
	fs, err := up.Upload(ctx, req.TargetAddr, staged.Path, name)
	out := imageSent{Bytes: staged.Size, Attempts: fs.Attempts, ResumedFrom: fs.ResumedFrom}
	if err != nil {
		return out, err
	}
	hdr := transfer.StreamHeader{Kind: KindImageFile, ID: req.Image,
		Meta: map[string]string{"migration": req.Migration, "spool": name, "size": strconv.FormatInt(staged.Size, 10), "sha256": staged.SHA256}}
	if _, _, err := a.sender.Stream(ctx, req.TargetAddr, hdr, func(io.Writer) error { return nil }); err != nil {
		return out, fmt.Errorf("load image %s on %s: %w", short(req.Image), req.TargetHost, err)
	}
	out.Duration = time.Since(start)
	out.DurationMS = out.Duration.Milliseconds()
	a.log.Info("image sent as a file", "image", short(req.Image), "to", req.TargetHost, "bytes", staged.Size,
		"attempts", fs.Attempts, "resumed_from", fs.ResumedFrom, "duration", out.Duration)
	return out, nil
}

// handleImageFile loads an image archive the sender uploaded into this
// host's spool, verified by size and sha256 as it is read, and removes it.
func (a *Agent) handleImageFile(ctx context.Context, h transfer.StreamHeader, r io.Reader) ([]byte, error) {
	if _, err := io.Copy(io.Discard, r); err != nil {
		return nil, err
	}
	if err := a.authoriseImage(ctx, "image file", h); err != nil {
		return nil, err
	}
	name := h.Meta["spool"]
	size, err := strconv.ParseInt(h.Meta["size"], 10, 64)
	if err != nil {
		return nil, fmt.Errorf("image file %s: size %q", name, h.Meta["size"])
	}
	defer func() { _ = a.images.spool.RemoveSpooled(name) }()
	f, err := a.images.spool.OpenSpooled(name, size, h.Meta["sha256"])
	if err != nil {
		return nil, fmt.Errorf("image file %s on %s: %w", name, a.host, err)
	}
	defer f.Close()
	loaded, err := a.eng.LoadImage(ctx, f)
	if err != nil {
		return nil, fmt.Errorf("load image %s on %s: %w", h.ID, a.host, err)
	}
	return []byte(loaded), nil
}
