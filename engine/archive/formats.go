package archive

import (
	"encoding/json"
	"fmt"
	"path"
	"strings"
	"time"
)

// configDump is the part of config.dump that is read: libpod's
// ContainerConfig for Podman, checkpointctl's reduced copy of it for CRI-O
// and containerd. Field names changed across Podman versions, so both
// spellings are accepted.
type configDump struct {
	ID               string    `json:"id"`
	Name             string    `json:"name"`
	RootfsImageID    string    `json:"rootfsImageID"`
	RootfsImage      string    `json:"rootfsImage"`
	RootfsImageRef   string    `json:"rootfsImageRef"`
	RootfsImageName  string    `json:"rootfsImageName"`
	RawImageName     string    `json:"RawImageName"`
	Runtime          string    `json:"runtime"`
	CreatedTime      time.Time `json:"createdTime"`
	CheckpointedTime time.Time `json:"checkpointedTime"`
}

type specDump struct {
	Hostname    string            `json:"hostname"`
	Annotations map[string]string `json:"annotations"`
	Process     *struct {
		Args []string `json:"args"`
		Env  []string `json:"env"`
	} `json:"process"`
	Mounts []struct {
		Destination string   `json:"destination"`
		Type        string   `json:"type"`
		Source      string   `json:"source"`
		Options     []string `json:"options"`
	} `json:"mounts"`
}

// Annotations the engines put in spec.dump (checkpointctl's lib/annotations.go
// and the CRI's).
const (
	annotationManager        = "io.container.manager"
	annotationEngine         = "org.criu.checkpoint.engine.name"
	annotationEngineVersion  = "org.criu.checkpoint.engine.version"
	annotationCRIUVersion    = "org.criu.checkpoint.criu.version"
	annotationRuntimeVersion = "org.criu.checkpoint.runtime.version"
	annotationKernel         = "org.criu.checkpoint.host.kernel"
	annotationArch           = "org.criu.checkpoint.host.arch"
	annotationCRIOMetadata   = "io.kubernetes.cri-o.Metadata"
	annotationCRIOPodName    = "io.kubernetes.pod.name"
	annotationCRIOPodNS      = "io.kubernetes.pod.namespace"
	annotationCRIContainer   = "io.kubernetes.cri.container-name"
	annotationCRISandbox     = "io.kubernetes.cri.sandbox-name"
	annotationCRISandboxNS   = "io.kubernetes.cri.sandbox-namespace"
)

// dockerManifest is the part of engine/docker's manifest that is read.
type dockerManifest struct {
	Format   int    `json:"format"`
	ID       string `json:"id"`
	DockerID string `json:"docker_id"`
	Name     string `json:"name"`
	Image    string `json:"image"`
	ImageID  string `json:"image_id"`
	Config   *struct {
		Hostname   string            `json:"Hostname"`
		Env        []string          `json:"Env"`
		Cmd        []string          `json:"Cmd"`
		Entrypoint []string          `json:"Entrypoint"`
		Labels     map[string]string `json:"Labels"`
	} `json:"config"`
	HostConfig *struct {
		Runtime string `json:"Runtime"`
	} `json:"host_config"`
	Mounts []struct {
		Type        string `json:"Type"`
		Name        string `json:"Name"`
		Source      string `json:"Source"`
		Destination string `json:"Destination"`
		Mode        string `json:"Mode"`
		RW          bool   `json:"RW"`
	} `json:"mounts"`
}

// containerdStatusDump is the part of the CRI ContainerStatus that
// containerd writes to status.dump.
type containerdStatusDump struct {
	Metadata *struct {
		Name string `json:"name"`
	} `json:"metadata"`
	Image *struct {
		Image string `json:"image"`
	} `json:"image"`
	ImageRef string `json:"image_ref"`
	Mounts   []struct {
		ContainerPath string `json:"container_path"`
		HostPath      string `json:"host_path"`
		Readonly      bool   `json:"readonly"`
	} `json:"mounts"`
}

// HostFacts is what orchestrate's agent records, at checkpoint time, about
// the host that took a checkpoint: the images themselves name neither the
// CRIU nor the kernel version, and Podman's archives do not either.
type HostFacts struct {
	Host          string    `json:"host"`
	At            time.Time `json:"at"`
	Engine        string    `json:"engine,omitempty"`
	EngineVersion string    `json:"engine_version,omitempty"`
	CRIUVersion   string    `json:"criu_version,omitempty"`
	Kernel        string    `json:"kernel,omitempty"`
	Arch          string    `json:"arch,omitempty"`
}

// build turns the members read into the Report.
func (a *Archive) build(rep *Report) error {
	var err error
	if _, ok := a.files[DockerManifestFile]; ok {
		err = a.buildDocker(rep)
	} else {
		err = a.buildContainer(rep)
	}
	if err != nil {
		return err
	}
	a.format = rep.Container.Format
	if _, ok := a.files[path.Join(CheckpointDirectory, PstreeImage)]; !ok {
		return fileErr(path.Join(CheckpointDirectory, PstreeImage), fmt.Errorf("%w: missing", ErrNotCheckpoint))
	}
	if m, ok := a.files[HostFactsFile]; ok {
		var hf HostFacts
		if err := json.Unmarshal(m.data, &hf); err != nil {
			rep.Warnings = append(rep.Warnings, fmt.Sprintf("%s: %v", HostFactsFile, err))
		} else {
			ck := &rep.Checkpoint
			ck.Host = hf.Host
			ck.CRIUVersion = firstNonEmpty(ck.CRIUVersion, hf.CRIUVersion)
			ck.Kernel = firstNonEmpty(ck.Kernel, hf.Kernel)
			ck.HostArch = firstNonEmpty(ck.HostArch, hf.Arch)
			rep.Container.EngineVersion = firstNonEmpty(rep.Container.EngineVersion, hf.EngineVersion)
			if ck.CheckpointedAt.IsZero() {
				ck.CheckpointedAt = hf.At
			}
		}
	}
	if err := a.buildCheckpoint(rep); err != nil {
		return err
	}
	if err := a.buildProcesses(rep); err != nil {
		return err
	}
	return a.buildShmem(rep)
}

// buildContainer reads config.dump and spec.dump: Podman, CRI-O or
// containerd, told apart by spec.dump's io.container.manager annotation and
// containerd's own status file.
func (a *Archive) buildContainer(rep *Report) error {
	cm, ok := a.files[ConfigDumpFile]
	if !ok {
		return fileErr(ConfigDumpFile, fmt.Errorf("%w: missing", ErrNotCheckpoint))
	}
	var cfg configDump
	if err := json.Unmarshal(cm.data, &cfg); err != nil {
		return fileErr(ConfigDumpFile, corruptf("%v", err))
	}
	c := &rep.Container
	c.Format = FormatPodman
	c.ID, c.Name, c.Runtime, c.Created = cfg.ID, cfg.Name, cfg.Runtime, cfg.CreatedTime
	c.Image = firstNonEmpty(cfg.RootfsImageName, cfg.RawImageName, cfg.RootfsImage)
	c.ImageID = firstNonEmpty(cfg.RootfsImageID, cfg.RootfsImageRef)
	if c.ImageID == "" && cfg.RootfsImage != c.Image {
		c.ImageID = cfg.RootfsImage
	}
	rep.Checkpoint.CheckpointedAt = cfg.CheckpointedTime

	if sm, ok := a.files[SpecDumpFile]; ok {
		var spec specDump
		if err := json.Unmarshal(sm.data, &spec); err != nil {
			return fileErr(SpecDumpFile, corruptf("%v", err))
		}
		c.Hostname = spec.Hostname
		if spec.Process != nil {
			c.Command = spec.Process.Args
			c.Env = spec.Process.Env
		}
		for _, m := range spec.Mounts {
			c.Mounts = append(c.Mounts, Mount{Destination: m.Destination, Type: m.Type, Source: m.Source, Options: m.Options})
		}
		c.Annotations = spec.Annotations
		an := spec.Annotations
		switch an[annotationManager] {
		case "libpod":
			c.Engine = "Podman"
		case "cri-o":
			c.Format, c.Engine = FormatCRIO, "CRI-O"
			var md struct {
				Name string `json:"name"`
			}
			if raw := an[annotationCRIOMetadata]; raw != "" {
				if err := json.Unmarshal([]byte(raw), &md); err != nil {
					rep.Warnings = append(rep.Warnings, fmt.Sprintf("%s: annotation %s: %v", SpecDumpFile, annotationCRIOMetadata, err))
				}
			}
			c.Name = firstNonEmpty(md.Name, c.Name)
			c.Pod, c.Namespace = an[annotationCRIOPodName], an[annotationCRIOPodNS]
		case "":
			if _, ok := a.files[ContainerdStatusFile]; ok || an[annotationCRISandbox] != "" {
				c.Format, c.Engine = FormatContainerd, "containerd"
				c.Name = firstNonEmpty(an[annotationCRIContainer], c.Name)
				c.Pod, c.Namespace = an[annotationCRISandbox], an[annotationCRISandboxNS]
			}
		default:
			c.Engine = an[annotationManager]
		}
		c.Engine = firstNonEmpty(an[annotationEngine], c.Engine)
		c.EngineVersion = an[annotationEngineVersion]
		rep.Checkpoint.CRIUVersion = an[annotationCRIUVersion]
		rep.Checkpoint.RuntimeVersion = an[annotationRuntimeVersion]
		rep.Checkpoint.Kernel = an[annotationKernel]
		rep.Checkpoint.HostArch = an[annotationArch]
	} else {
		rep.Warnings = append(rep.Warnings, SpecDumpFile+": missing")
		if _, ok := a.files[ContainerdStatusFile]; ok {
			c.Format, c.Engine = FormatContainerd, "containerd"
		}
	}
	if c.Engine == "" {
		c.Engine = "Podman" // config.dump is libpod's format
	}
	if c.Format == FormatContainerd {
		if sm, ok := a.files[StatusDumpFile]; ok {
			var st containerdStatusDump
			if err := json.Unmarshal(sm.data, &st); err != nil {
				rep.Warnings = append(rep.Warnings, fmt.Sprintf("%s: %v", StatusDumpFile, err))
			} else {
				if st.Metadata != nil {
					c.Name = firstNonEmpty(c.Name, st.Metadata.Name)
				}
				if st.Image != nil {
					c.Image = firstNonEmpty(c.Image, st.Image.Image)
				}
				c.ImageID = firstNonEmpty(c.ImageID, st.ImageRef)
				if len(c.Mounts) == 0 {
					for _, m := range st.Mounts {
						mt := Mount{Destination: m.ContainerPath, Type: "bind", Source: m.HostPath, Options: []string{"rw"}}
						if m.Readonly {
							mt.Options = []string{"ro"}
						}
						c.Mounts = append(c.Mounts, mt)
					}
				}
			}
		}
	}

	if nm, ok := a.files[NetworkStatusFile]; ok {
		nets, err := parseNetworkStatus(nm.data)
		if err != nil {
			rep.Warnings = append(rep.Warnings, fmt.Sprintf("%s: %v", NetworkStatusFile, err))
		}
		c.Networks = nets
	}
	if dm, ok := a.files[DeletedFilesFile]; ok {
		if err := json.Unmarshal(dm.data, &rep.RootfsDiff.Deleted); err != nil {
			return fileErr(DeletedFilesFile, corruptf("%v", err))
		}
	}
	return nil
}

// buildDocker reads the manifest of orchestrate's Docker archive.
func (a *Archive) buildDocker(rep *Report) error {
	var m dockerManifest
	if err := json.Unmarshal(a.files[DockerManifestFile].data, &m); err != nil {
		return fileErr(DockerManifestFile, corruptf("%v", err))
	}
	if m.Format != 1 {
		return fileErr(DockerManifestFile, corruptf("format %d, this reader knows 1", m.Format))
	}
	c := &rep.Container
	c.Format, c.Engine = FormatDocker, "Docker"
	c.ID, c.Name, c.Image, c.ImageID = firstNonEmpty(m.ID, m.DockerID), m.Name, m.Image, m.ImageID
	if m.Config != nil {
		c.Hostname, c.Env = m.Config.Hostname, m.Config.Env
		c.Command = append(append([]string{}, m.Config.Entrypoint...), m.Config.Cmd...)
		c.Annotations = m.Config.Labels
	}
	c.Runtime = "runc"
	if m.HostConfig != nil && m.HostConfig.Runtime != "" {
		c.Runtime = m.HostConfig.Runtime
	}
	for _, mt := range m.Mounts {
		mo := Mount{Destination: mt.Destination, Type: mt.Type, Source: firstNonEmpty(mt.Name, mt.Source)}
		if mt.RW {
			mo.Options = append(mo.Options, "rw")
		} else {
			mo.Options = append(mo.Options, "ro")
		}
		if mt.Mode != "" {
			mo.Options = append(mo.Options, strings.Split(mt.Mode, ",")...)
		}
		c.Mounts = append(c.Mounts, mo)
	}
	c.Created = a.files[DockerManifestFile].modTime
	return nil
}
