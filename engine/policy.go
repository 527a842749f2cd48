package engine

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
)

// The restore policy: what a host lets a restore create.
//
// A checkpoint archive says how its container runs: privileged or not,
// which host paths it binds, which devices and capabilities it gets. Any
// member of the cluster can send one, so a host does not take that on
// trust. Each host has a local RestorePolicy (config keys restore.*),
// whose zero value refuses everything beyond an ordinary unprivileged
// container. It is applied twice, with the same rules:
//
//   - at preflight, before the source freezes anything: the source's engine
//     describes the container (RestoreSpecer), the target's judges it
//     (RestoreChecker), and a refusal ends the migration with the
//     container still running where it was;
//   - at restore, on what the archive itself says (the Docker manifest's
//     host config; Podman's config.dump and spec.dump), before the target
//     creates anything, because an archive need not match its preflight.
//
// Host networking is not judged: Docker migrations need it.

// ErrPolicy: the restore would give the container more than this host's
// restore policy allows. Nothing was created.
var ErrPolicy = errors.New("refused by this host's restore policy")

// RestoreSpec is what restoring a container would grant it on a host.
type RestoreSpec struct {
	// Privileged: the engine's privileged mode.
	Privileged bool `json:"privileged,omitempty"`
	// HostNamespaces names the namespaces (besides the network) shared with
	// the host or another container: "pid", "ipc", "uts", "mount",
	// "cgroup", "user", or a joined namespace's path.
	HostNamespaces []string `json:"host_namespaces,omitempty"`
	// Unconfined lists what turns the container's confinement off:
	// "seccomp=unconfined", "apparmor=unconfined", "label=disable",
	// "systempaths=unconfined", device cgroup rules, another runtime...
	Unconfined []string `json:"unconfined,omitempty"`
	// Binds are host paths bind-mounted into the container (named volumes
	// and the engine's own files excluded).
	Binds []string `json:"binds,omitempty"`
	// Devices are host device paths given to the container.
	Devices []string `json:"devices,omitempty"`
	// CapAdd are capabilities beyond DefaultCapabilities, as "CAP_X".
	CapAdd []string `json:"cap_add,omitempty"`
}

// RestorePolicy is one host's rules for what a restore may create. The
// zero value is the safe default: nothing privileged, no host binds, no
// devices, no capability beyond DefaultCapabilities.
type RestorePolicy struct {
	// AllowPrivileged allows privileged containers, shared host
	// namespaces and turned-off confinement (restore.allow_privileged).
	AllowPrivileged bool
	// AllowedBindPaths are host paths that binds may come from: the path
	// itself or anything under it, after symbolic links are resolved on
	// this host (restore.allowed_bind_paths).
	AllowedBindPaths []string
	// AllowedDevices are host device paths a container may be given
	// (restore.allowed_devices).
	AllowedDevices []string
	// AllowedCapabilities may be added beyond DefaultCapabilities ("ALL"
	// allows any) (restore.allowed_capabilities).
	AllowedCapabilities []string
}

// DefaultCapabilities are the capabilities of an ordinary container
// (Docker's default set, which Podman on these hosts also uses); a
// container may always have these.
var DefaultCapabilities = []string{
	"CAP_AUDIT_WRITE", "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL", "CAP_MKNOD",
	"CAP_NET_BIND_SERVICE", "CAP_NET_RAW", "CAP_SETFCAP", "CAP_SETGID", "CAP_SETPCAP", "CAP_SETUID", "CAP_SYS_CHROOT",
}

// NormalizeCap spells a capability as "CAP_X" ("sys_admin" → "CAP_SYS_ADMIN";
// "ALL" stays).
func NormalizeCap(c string) string {
	c = strings.ToUpper(strings.TrimSpace(c))
	if c == "ALL" || c == "" || strings.HasPrefix(c, "CAP_") {
		return c
	}
	return "CAP_" + c
}

// ExtraCapabilities returns the capabilities of caps beyond
// DefaultCapabilities, normalised, sorted and without duplicates.
func ExtraCapabilities(caps []string) []string {
	var out []string
	for _, c := range caps {
		c = NormalizeCap(c)
		if c != "" && !slices.Contains(DefaultCapabilities, c) && !slices.Contains(out, c) {
			out = append(out, c)
		}
	}
	slices.Sort(out)
	return out
}

// Check judges s. The error wraps ErrPolicy, names every violation and
// the key that would allow it.
func (p RestorePolicy) Check(s RestoreSpec) error {
	var why []string
	if !p.AllowPrivileged {
		if s.Privileged {
			why = append(why, "a privileged container")
		}
		if len(s.HostNamespaces) > 0 {
			why = append(why, "shared host namespaces ("+strings.Join(s.HostNamespaces, ", ")+")")
		}
		if len(s.Unconfined) > 0 {
			why = append(why, "confinement turned off ("+strings.Join(s.Unconfined, ", ")+")")
		}
		if len(why) > 0 {
			why[len(why)-1] += " [restore.allow_privileged]"
		}
	}
	var binds []string
	for _, b := range s.Binds {
		if !underAny(b, p.AllowedBindPaths) {
			binds = append(binds, b)
		}
	}
	if len(binds) > 0 {
		why = append(why, "host-path binds of "+strings.Join(binds, ", ")+" [restore.allowed_bind_paths]")
	}
	var devs []string
	for _, d := range s.Devices {
		if !slices.Contains(cleanAll(p.AllowedDevices), filepath.Clean(d)) {
			devs = append(devs, d)
		}
	}
	if len(devs) > 0 {
		why = append(why, "devices "+strings.Join(devs, ", ")+" [restore.allowed_devices]")
	}
	var caps []string
	allowed := make([]string, 0, len(p.AllowedCapabilities))
	for _, c := range p.AllowedCapabilities {
		allowed = append(allowed, NormalizeCap(c))
	}
	if !slices.Contains(allowed, "ALL") {
		for _, c := range ExtraCapabilities(s.CapAdd) {
			if !slices.Contains(allowed, c) {
				caps = append(caps, c)
			}
		}
	}
	if len(caps) > 0 {
		why = append(why, "capabilities "+strings.Join(caps, ", ")+" [restore.allowed_capabilities]")
	}
	if len(why) == 0 {
		return nil
	}
	return fmt.Errorf("%w: %s", ErrPolicy, strings.Join(why, "; "))
}

// underAny reports whether p is one of dirs or lies under one of them.
func underAny(p string, dirs []string) bool {
	p = filepath.Clean(p)
	if !filepath.IsAbs(p) {
		return false
	}
	for _, d := range cleanAll(dirs) {
		if d == "/" || p == d || strings.HasPrefix(p, d+"/") {
			return true
		}
	}
	return false
}

func cleanAll(ps []string) []string {
	out := make([]string, 0, len(ps))
	for _, p := range ps {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, filepath.Clean(p))
		}
	}
	return out
}

// RestoreSpecer is implemented by engines that can describe what restoring
// one of their containers elsewhere would grant it (the source's half of
// the preflight).
type RestoreSpecer interface {
	RestoreSpec(ctx context.Context, id string) (RestoreSpec, error)
}

// RestoreChecker is implemented by engines that judge a RestoreSpec
// against their host's policy, plus what else they know would make the
// restore fail here (the target's half of the preflight). The error wraps
// ErrPolicy for a policy refusal.
type RestoreChecker interface {
	CheckRestore(ctx context.Context, s RestoreSpec) error
}
