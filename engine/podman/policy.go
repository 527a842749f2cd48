//go:build remote

package podman

import (
	"archive/tar"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"

	spec "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/edgemigrate/orchestrate/engine"
)

// The restore policy (engine/policy.go) for Podman.
//
// Podman's import recreates the container from the archive's config.dump
// (libpod's container config) and runs it with spec.dump (the OCI runtime
// spec) as it is: every mount, device, capability, namespace and hook in
// spec.dump takes effect on the target. So the target judges those two
// files, as they pass on their way to the service, before the service has
// the whole archive: Podman imports only once the body has ended, and a
// refusal fails the body first, so nothing is created.

var (
	_ engine.RestoreSpecer  = (*Engine)(nil)
	_ engine.RestoreChecker = (*Engine)(nil)
)

const entrySpecDump = "spec.dump"

// dumpConfig is the part of config.dump the policy reads.
type dumpConfig struct {
	ID           string `json:"id"`
	Privileged   bool   `json:"privileged"`
	NamedVolumes []struct {
		Name string `json:"volumeName"`
		Dest string `json:"dest"`
	} `json:"namedVolumes"`
}

// specFromDumps is what restoring an archive with these config.dump and
// spec.dump would grant its container.
func specFromDumps(cfgJSON, specJSON []byte) (engine.RestoreSpec, error) {
	var cfg dumpConfig
	if err := json.Unmarshal(cfgJSON, &cfg); err != nil {
		return engine.RestoreSpec{}, fmt.Errorf("%s: %w", entryConfigDump, err)
	}
	var sp spec.Spec
	if err := json.Unmarshal(specJSON, &sp); err != nil {
		return engine.RestoreSpec{}, fmt.Errorf("%s: %w", entrySpecDump, err)
	}
	var s engine.RestoreSpec
	s.Privileged = cfg.Privileged
	if sp.Hooks != nil && (len(sp.Hooks.Prestart)+len(sp.Hooks.CreateRuntime)+len(sp.Hooks.CreateContainer)+
		len(sp.Hooks.StartContainer)+len(sp.Hooks.Poststart)+len(sp.Hooks.Poststop) > 0) {
		s.Unconfined = append(s.Unconfined, "OCI hooks (commands run on the host)")
	}
	if v := sp.Annotations["org.criu.config"]; v != "" {
		s.Unconfined = append(s.Unconfined, "a CRIU configuration file ("+v+")")
	}
	if sp.Process != nil {
		if sp.Process.ApparmorProfile == "unconfined" {
			s.Unconfined = append(s.Unconfined, "apparmor=unconfined")
		}
		if c := sp.Process.Capabilities; c != nil && !cfg.Privileged {
			s.CapAdd = engine.ExtraCapabilities(slices.Concat(c.Bounding, c.Effective, c.Permitted, c.Inheritable, c.Ambient))
		}
	}
	devices := map[string]bool{} // "c 10:229"
	if l := sp.Linux; l != nil {
		have := map[spec.LinuxNamespaceType]bool{}
		for _, ns := range l.Namespaces {
			have[ns.Type] = true
			if ns.Path != "" && ns.Type != spec.NetworkNamespace {
				s.HostNamespaces = append(s.HostNamespaces, string(ns.Type)+" ("+ns.Path+")")
			}
		}
		for _, t := range []spec.LinuxNamespaceType{spec.PIDNamespace, spec.IPCNamespace, spec.UTSNamespace, spec.MountNamespace} {
			if !have[t] {
				s.HostNamespaces = append(s.HostNamespaces, string(t))
			}
		}
		if !cfg.Privileged {
			if l.Seccomp == nil {
				s.Unconfined = append(s.Unconfined, "seccomp=unconfined")
			}
			if len(l.MaskedPaths) == 0 || len(l.ReadonlyPaths) == 0 {
				s.Unconfined = append(s.Unconfined, "systempaths=unconfined")
			}
			for _, d := range l.Devices {
				s.Devices = append(s.Devices, d.Path)
				devices[fmt.Sprintf("%s %d:%d", d.Type, d.Major, d.Minor)] = true
			}
			if l.Resources != nil {
				for _, r := range l.Resources.Devices {
					if !r.Allow {
						continue
					}
					key := r.Type + " " + num(r.Major) + ":" + num(r.Minor)
					if !devices[key] {
						s.Unconfined = append(s.Unconfined, "device cgroup rule allowing "+key)
					}
				}
			}
		}
	}
	for _, m := range sp.Mounts {
		bind := m.Type == "bind" || slices.Contains(m.Options, "bind") || slices.Contains(m.Options, "rbind")
		switch {
		case bind:
			if !podmansOwn(cfg, m) {
				s.Binds = append(s.Binds, m.Source)
			}
		case m.Type == "sysfs" || m.Type == "cgroup" || m.Type == "cgroup2":
			if !cfg.Privileged && !slices.Contains(m.Options, "ro") {
				s.Unconfined = append(s.Unconfined, "writable "+m.Destination)
			}
		case m.Type == "proc" || m.Type == "tmpfs" || m.Type == "devpts" || m.Type == "mqueue":
		default:
			s.Unconfined = append(s.Unconfined, fmt.Sprintf("a %s mount of %s", m.Type, m.Source))
		}
	}
	return s, nil
}

func num(p *int64) string {
	if p == nil {
		return "*"
	}
	return fmt.Sprint(*p)
}

// podmansOwn reports whether a bind mount is one Podman makes for every
// container: its files under the container's own userdata directory
// (hosts, resolv.conf, /dev/shm, ...; the import keeps the container's ID,
// and the target's Podman makes them at the same place), or a named
// volume's data directory.
func podmansOwn(cfg dumpConfig, m spec.Mount) bool {
	src := m.Source
	if path.Clean(src) != src || !path.IsAbs(src) {
		return false
	}
	if cfg.ID != "" && strings.Contains(src, "/overlay-containers/"+cfg.ID+"/userdata/") {
		return true
	}
	for _, v := range cfg.NamedVolumes {
		if v.Dest == m.Destination && v.Name != "" && strings.HasSuffix(src, "/"+v.Name+"/_data") {
			return true
		}
	}
	return false
}

// policyReader yields r's bytes while it reads config.dump and spec.dump
// on the side; once it has both it judges them, and a refusal fails the
// next Read. An archive that ends without both fails too: it cannot be
// judged. See checkArchive.
type policyReader struct {
	r      io.Reader
	policy engine.RestorePolicy
	pw     *io.PipeWriter
	done   chan struct{}
	err    error // the verdict; set before done closes
	judged bool  // the verdict is final (also set before done closes)
}

// checkArchive wraps r, the archive a restore reads, with the host's
// restore policy.
func (e *Engine) checkArchive(r io.Reader) io.Reader {
	pr, pw := io.Pipe()
	p := &policyReader{r: r, policy: e.cfg.Policy, pw: pw, done: make(chan struct{})}
	go p.parse(pr)
	return p
}

var errJudged = errors.New("judged")

func (p *policyReader) parse(pr *io.PipeReader) {
	defer close(p.done)
	tr := tar.NewReader(pr)
	var cfg, sp []byte
	for cfg == nil || sp == nil {
		h, err := tr.Next()
		if err != nil {
			p.err = fmt.Errorf("%w: cannot judge the archive: %v", engine.ErrBadArchive, err)
			if errors.Is(err, io.EOF) {
				p.err = fmt.Errorf("%w: the archive has no %s and %s to judge", engine.ErrBadArchive, entryConfigDump, entrySpecDump)
			}
			pr.CloseWithError(p.err)
			return
		}
		name := strings.TrimPrefix(h.Name, "./")
		if name != entryConfigDump && name != entrySpecDump {
			continue
		}
		b, err := io.ReadAll(io.LimitReader(tr, 16<<20))
		if err != nil {
			p.err = fmt.Errorf("%w: %s: %v", engine.ErrBadArchive, name, err)
			pr.CloseWithError(p.err)
			return
		}
		if name == entryConfigDump {
			cfg = b
		} else {
			sp = b
		}
	}
	s, err := specFromDumps(cfg, sp)
	if err == nil {
		err = p.policy.Check(s)
	} else {
		err = fmt.Errorf("%w: %v", engine.ErrBadArchive, err)
	}
	p.err, p.judged = err, true
	// The rest of the archive no longer needs reading here.
	pr.CloseWithError(errJudged)
}

func (p *policyReader) Read(b []byte) (int, error) {
	select {
	case <-p.done:
		if p.err != nil {
			return 0, p.err
		}
	default:
	}
	n, err := p.r.Read(b)
	if n > 0 {
		// Fails only once the parser is done: then its verdict counts.
		_, _ = p.pw.Write(b[:n])
	}
	if err == io.EOF {
		p.pw.Close()
		<-p.done
		if p.err != nil {
			return n, p.err
		}
	}
	select {
	case <-p.done:
		if p.err != nil {
			return n, p.err
		}
	default:
	}
	return n, err
}

// inspectSecurity is the part of the libpod inspect answer RestoreSpec reads.
type inspectSecurity struct {
	BoundingCaps []string `json:"BoundingCaps"`
	Mounts       []struct {
		Type   string `json:"Type"`
		Source string `json:"Source"`
	} `json:"Mounts"`
	HostConfig struct {
		Privileged  bool     `json:"Privileged"`
		PidMode     string   `json:"PidMode"`
		IpcMode     string   `json:"IpcMode"`
		UTSMode     string   `json:"UTSMode"`
		SecurityOpt []string `json:"SecurityOpt"`
		Devices     []struct {
			PathOnHost string `json:"PathOnHost"`
		} `json:"Devices"`
	} `json:"HostConfig"`
}

// RestoreSpec implements engine.RestoreSpecer from the container's inspect
// data (the source's half of the preflight).
func (e *Engine) RestoreSpec(ctx context.Context, id string) (engine.RestoreSpec, error) {
	resp, err := e.do(ctx, http.MethodGet, "/containers/"+url.PathEscape(id)+"/json", nil, nil)
	if err != nil {
		return engine.RestoreSpec{}, fmt.Errorf("inspect %s: %w", id, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return engine.RestoreSpec{}, fmt.Errorf("container %s: %w", id, responseError(resp))
	}
	var d inspectSecurity
	if err := json.NewDecoder(resp.Body).Decode(&d); err != nil {
		return engine.RestoreSpec{}, fmt.Errorf("inspect %s: decode: %w", id, err)
	}
	return specFromInspect(d), nil
}

func specFromInspect(d inspectSecurity) engine.RestoreSpec {
	var s engine.RestoreSpec
	hc := d.HostConfig
	s.Privileged = hc.Privileged
	for _, m := range []struct{ name, mode string }{{"pid", hc.PidMode}, {"ipc", hc.IpcMode}, {"uts", hc.UTSMode}} {
		if m.mode == "host" || strings.HasPrefix(m.mode, "container:") || strings.HasPrefix(m.mode, "ns:") {
			s.HostNamespaces = append(s.HostNamespaces, m.name)
		}
	}
	for _, o := range hc.SecurityOpt {
		switch o {
		case "seccomp=unconfined", "apparmor=unconfined", "label=disable", "systempaths=unconfined":
			s.Unconfined = append(s.Unconfined, o)
		}
	}
	if !hc.Privileged {
		for _, dev := range hc.Devices {
			s.Devices = append(s.Devices, dev.PathOnHost)
		}
		s.CapAdd = engine.ExtraCapabilities(d.BoundingCaps)
	}
	for _, m := range d.Mounts {
		if m.Type == "bind" {
			s.Binds = append(s.Binds, m.Source)
		}
	}
	return s
}

// CheckRestore implements engine.RestoreChecker: the host's policy, with
// binds judged where their links lead on this host, and bind sources that
// must exist here.
func (e *Engine) CheckRestore(ctx context.Context, s engine.RestoreSpec) error {
	var missing []string
	for i, b := range s.Binds {
		if r, err := filepath.EvalSymlinks(b); err == nil {
			s.Binds[i] = r
		} else if _, serr := os.Stat(b); serr != nil {
			missing = append(missing, b)
		}
	}
	err := e.cfg.Policy.Check(s)
	if len(missing) > 0 {
		err = errors.Join(err, fmt.Errorf("bind-mount source(s) missing on this host: %s", strings.Join(missing, ", ")))
	}
	return err
}
