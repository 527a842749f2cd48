//go:build remote

package podman

import (
	"context"
	"fmt"
	"io"
	"net/http"

	"github.com/containers/podman/v4/pkg/bindings"
	"github.com/containers/podman/v4/pkg/bindings/images"
	"github.com/containers/podman/v4/pkg/bindings/system"

	"github.com/edgemigrate/orchestrate/engine"
)

// The checkpoint-image half of the engine (engine.CheckpointImages): the
// host facts Podman writes into its own checkpoint images, image inspection
// for their annotations, and registry push and pull, all through the
// service. Credentials are the service's own (its auth file).

var _ engine.CheckpointImages = (*Engine)(nil)

// HostInfo implements engine.CheckpointImages from the service's info.
func (e *Engine) HostInfo(ctx context.Context) (engine.HostInfo, error) {
	info, err := system.Info(e.call(ctx), nil)
	if err != nil {
		return engine.HostInfo{}, fmt.Errorf("podman info: %w", err)
	}
	hi := engine.HostInfo{EngineVersion: info.Version.Version}
	if h := info.Host; h != nil {
		hi.Arch, hi.Kernel, hi.CgroupVersion = h.Arch, h.Kernel, h.CgroupsVersion
		hi.DistributionName, hi.DistributionVersion = h.Distribution.Distribution, h.Distribution.Version
		if h.OCIRuntime != nil {
			hi.RuntimeName, hi.RuntimeVersion = h.OCIRuntime.Name, h.OCIRuntime.Version
		}
		if h.Conmon != nil {
			hi.ConmonVersion = h.Conmon.Version
		}
	}
	return hi, nil
}

// ImageInfo implements engine.CheckpointImages.
func (e *Engine) ImageInfo(ctx context.Context, ref string) (engine.ImageInfo, error) {
	img, err := images.GetImage(e.call(ctx), ref, nil)
	if err != nil {
		if code, _ := bindings.CheckResponseCode(err); code == http.StatusNotFound {
			return engine.ImageInfo{}, fmt.Errorf("image %s: %w", ref, engine.ErrNotFound)
		}
		return engine.ImageInfo{}, fmt.Errorf("image %s: %w", ref, err)
	}
	if img.ImageData == nil {
		return engine.ImageInfo{}, fmt.Errorf("image %s: the service answered no data", ref)
	}
	return engine.ImageInfo{ID: img.ID, Names: img.RepoTags, Annotations: img.Annotations}, nil
}

// PushImage implements engine.CheckpointImages: the local image ref goes to
// the registry its name names. Podman keeps an OCI manifest as it is
// (annotations included) and compresses the layers with gzip.
func (e *Engine) PushImage(ctx context.Context, ref string, opts engine.RegistryOptions) error {
	// Podman 4.3 answers a quiet push with a bare "" that newer bindings
	// cannot parse: ask for the progress stream and discard it.
	quiet, skip, progress := false, !opts.TLSVerify, io.Discard
	po := &images.PushOptions{Quiet: &quiet, SkipTLSVerify: &skip, ProgressWriter: &progress}
	if err := images.Push(e.call(ctx), ref, ref, po); err != nil {
		return fmt.Errorf("push image %s: %w", ref, err)
	}
	return nil
}

// PullImage implements engine.CheckpointImages.
func (e *Engine) PullImage(ctx context.Context, ref string, opts engine.RegistryOptions) (string, error) {
	quiet, skip, policy := true, !opts.TLSVerify, "always"
	ids, err := images.Pull(e.call(ctx), ref, &images.PullOptions{Quiet: &quiet, SkipTLSVerify: &skip, Policy: &policy})
	if err != nil {
		return "", fmt.Errorf("pull image %s: %w", ref, err)
	}
	if len(ids) == 0 {
		return "", fmt.Errorf("pull image %s: the service pulled nothing", ref)
	}
	return ids[0], nil
}
