package engine

import "context"

// CheckpointImages is an optional capability (find it by type assertion):
// what a host needs to build checkpoint images (an OCI image whose layer is
// a checkpoint archive, as `podman container checkpoint --create-image`
// makes) and to restore from them, beyond moving images with Images.
// engine/podman implements it; Docker has no checkpoint images.
type CheckpointImages interface {
	Images
	// HostInfo reports what Podman records about its host in a checkpoint
	// image's annotations.
	HostInfo(ctx context.Context) (HostInfo, error)
	// ImageInfo inspects a local image; ErrNotFound when there is none.
	ImageInfo(ctx context.Context, ref string) (ImageInfo, error)
	// PushImage pushes the local image ref to the registry its name names.
	PushImage(ctx context.Context, ref string, opts RegistryOptions) error
	// PullImage pulls ref from its registry and returns the image's ID.
	PullImage(ctx context.Context, ref string, opts RegistryOptions) (string, error)
}

// HostInfo is what an engine says about its host and runtime.
type HostInfo struct {
	EngineVersion       string `json:"engine_version"`
	RuntimeName         string `json:"runtime_name"` // the OCI runtime's name, e.g. runc
	RuntimeVersion      string `json:"runtime_version"`
	ConmonVersion       string `json:"conmon_version,omitempty"`
	CgroupVersion       string `json:"cgroup_version"` // "v1" or "v2"
	Arch                string `json:"arch"`
	Kernel              string `json:"kernel"`
	DistributionName    string `json:"distribution_name,omitempty"`
	DistributionVersion string `json:"distribution_version,omitempty"`
}

// ImageInfo is what an engine says about one local image.
type ImageInfo struct {
	ID          string            `json:"id"`
	Names       []string          `json:"names,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"` // the OCI manifest's
}

// RegistryOptions say how to reach an image registry.
type RegistryOptions struct {
	// TLSVerify checks the registry's certificate. Off, the engine also
	// talks plain HTTP to it: for a local test registry only.
	TLSVerify bool
}
