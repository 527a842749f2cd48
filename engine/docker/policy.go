package docker

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/mount"

	"github.com/edgemigrate/orchestrate/engine"
)

var (
	_ engine.RestoreSpecer  = (*Engine)(nil)
	_ engine.RestoreChecker = (*Engine)(nil)
)

// restoreSpecOf is what a container created with hc gets from its host:
// everything of hc that ContainerCreate would grant beyond an ordinary
// container.
func restoreSpecOf(hc *container.HostConfig) engine.RestoreSpec {
	var s engine.RestoreSpec
	if hc == nil {
		return s
	}
	s.Privileged = hc.Privileged
	if hc.PidMode.IsHost() || hc.PidMode.IsContainer() {
		s.HostNamespaces = append(s.HostNamespaces, "pid")
	}
	if hc.IpcMode.IsHost() || hc.IpcMode.IsContainer() {
		s.HostNamespaces = append(s.HostNamespaces, "ipc")
	}
	if hc.UTSMode.IsHost() {
		s.HostNamespaces = append(s.HostNamespaces, "uts")
	}
	if hc.UsernsMode.IsHost() {
		s.HostNamespaces = append(s.HostNamespaces, "user")
	}
	for _, o := range hc.SecurityOpt {
		k, v, _ := strings.Cut(strings.Replace(o, ":", "=", 1), "=")
		switch {
		case k == "seccomp" && v == "unconfined", k == "apparmor" && v == "unconfined", k == "systempaths" && v == "unconfined":
			s.Unconfined = append(s.Unconfined, k+"=unconfined")
		case k == "label" && v == "disable":
			s.Unconfined = append(s.Unconfined, "label=disable")
		case k == "seccomp":
			s.Unconfined = append(s.Unconfined, "a custom seccomp profile")
		}
	}
	if hc.Runtime != "" && hc.Runtime != "runc" {
		s.Unconfined = append(s.Unconfined, "runtime "+hc.Runtime)
	}
	if hc.CgroupParent != "" {
		s.Unconfined = append(s.Unconfined, "cgroup parent "+hc.CgroupParent)
	}
	if len(hc.DeviceCgroupRules) > 0 {
		s.Unconfined = append(s.Unconfined, "device cgroup rules "+strings.Join(hc.DeviceCgroupRules, " "))
	}
	if len(hc.DeviceRequests) > 0 {
		s.Unconfined = append(s.Unconfined, "device requests")
	}
	if len(hc.VolumesFrom) > 0 {
		s.Unconfined = append(s.Unconfined, "volumes from "+strings.Join(hc.VolumesFrom, ", "))
	}
	for _, b := range hc.Binds {
		if src, _, _ := strings.Cut(b, ":"); strings.HasPrefix(src, "/") {
			s.Binds = append(s.Binds, src)
		}
	}
	if hc.MaskedPaths != nil && len(hc.MaskedPaths) == 0 || hc.ReadonlyPaths != nil && len(hc.ReadonlyPaths) == 0 {
		s.Unconfined = append(s.Unconfined, "systempaths=unconfined")
	}
	for _, m := range hc.Mounts {
		switch {
		case m.Type == mount.TypeBind:
			s.Binds = append(s.Binds, m.Source)
		case m.Type == mount.TypeVolume && m.VolumeOptions != nil && m.VolumeOptions.DriverConfig != nil &&
			(len(m.VolumeOptions.DriverConfig.Options) > 0 || m.VolumeOptions.DriverConfig.Name != "" && m.VolumeOptions.DriverConfig.Name != "local"):
			// A local volume with options can mount any host path or device.
			s.Unconfined = append(s.Unconfined, "volume "+m.Source+" with driver options")
		}
	}
	for _, d := range hc.Devices {
		s.Devices = append(s.Devices, d.PathOnHost)
	}
	s.CapAdd = engine.ExtraCapabilities(hc.CapAdd)
	return s
}

// RestoreSpec implements engine.RestoreSpecer: what restoring the container
// elsewhere would grant it (the source's half of the preflight).
func (e *Engine) RestoreSpec(ctx context.Context, id string) (engine.RestoreSpec, error) {
	cj, err := e.resolve(ctx, id)
	if err != nil {
		return engine.RestoreSpec{}, fmt.Errorf("container %s: %w", id, wrap(err))
	}
	return restoreSpecOf(cj.HostConfig), nil
}

// CheckRestore implements engine.RestoreChecker: the host's restore policy
// (binds judged where their symbolic links lead on this host), and bind
// sources that must exist here. Restore applies the same checks to the
// archive's own host config.
func (e *Engine) CheckRestore(ctx context.Context, s engine.RestoreSpec) error {
	return e.checkSpec(e.daemonRoot(), s, false)
}

// checkSpec judges s by the policy (unless the archive is local: it never
// left this host) and checks that its bind sources exist here.
func (e *Engine) checkSpec(root string, s engine.RestoreSpec, local bool) error {
	var missing []string
	binds := make([]string, 0, len(s.Binds))
	for _, b := range s.Binds {
		resolved := resolveOnHost(root, b)
		binds = append(binds, resolved)
		if _, err := os.Stat(inRoot(root, b)); err != nil {
			missing = append(missing, b)
		}
	}
	s.Binds = binds
	var err error
	if !local {
		err = e.cfg.Policy.Check(s)
	}
	if len(missing) > 0 {
		err = errors.Join(err, fmt.Errorf("%w: bind-mount source(s) missing on this host: %s", ErrUnsupported, strings.Join(missing, ", ")))
	}
	return err
}

// resolveOnHost resolves the symbolic links of a daemon path p as dockerd
// would when it mounts it, and returns the result as a daemon path.
func resolveOnHost(root, p string) string {
	if !filepath.IsAbs(p) {
		return p
	}
	if root == "" {
		if r, err := filepath.EvalSymlinks(p); err == nil {
			return r
		}
		return filepath.Clean(p)
	}
	r := strings.TrimPrefix(inRoot(root, p), root)
	if r == "" {
		return "/"
	}
	return r
}

// manifestSpec is restoreSpecOf the archive's host config, plus the binds
// its mount list names (they must agree with the host config; both are
// judged).
func manifestSpec(m manifest) engine.RestoreSpec {
	s := restoreSpecOf(m.HostConfig)
	for _, mp := range m.Mounts {
		if mp.Type == mount.TypeBind && !slices.Contains(s.Binds, mp.Source) {
			s.Binds = append(s.Binds, mp.Source)
		}
	}
	return s
}
