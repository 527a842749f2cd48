package archive

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"testing"
	"time"
)

// checkpointMembers are the synthetic archive's CRIU images (checkpoint/
// and stats-dump), which every format carries the same way.
func checkpointMembers(t *testing.T) []member2 {
	var out []member2
	for _, m := range synthMembers(t) {
		if strings.HasPrefix(m.name, "checkpoint") || m.name == "stats-dump" {
			out = append(out, m)
		}
	}
	return out
}

func jsonBytes(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func rootfsDiffTar(t *testing.T) []byte {
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	tw.WriteHeader(&tar.Header{Name: "etc/", Typeflag: tar.TypeDir, Mode: 0o755})
	tw.WriteHeader(&tar.Header{Name: "etc/app.conf", Typeflag: tar.TypeReg, Mode: 0o600, Size: 4})
	tw.Write([]byte("x=1\n"))
	tw.Close()
	return b.Bytes()
}

// The kubelet's checkpoint archives, built from the layouts CRI-O and
// containerd document in code (checkpointctl's lib/metadata.go, containerd's
// internal/cri/server/container_checkpoint_linux.go): config.dump is
// checkpointctl's reduced ContainerConfig, spec.dump the OCI spec with the
// engine's annotations; containerd adds status.dump (the CRI container
// status), its own status file and a gzip-compressed rootfs-diff.tar.
func TestKubeletArchives(t *testing.T) {
	created := time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)
	checkpointed := created.Add(time.Hour)
	cfg := map[string]any{"id": "c0ffee0000000000000000000000000000000000000000000000000000000001", "name": "k8s_counter_counters_default",
		"rootfsImage": "quay.io/example/counter:latest", "rootfsImageRef": "quay.io/example/counter@sha256:abcd", "rootfsImageName": "quay.io/example/counter:latest",
		"runtime": "runc", "createdTime": created, "checkpointedTime": checkpointed}
	spec := func(annotations map[string]string) []byte {
		return jsonBytes(t, map[string]any{"hostname": "counters", "annotations": annotations,
			"process": map[string]any{"args": []string{"/counter"}, "env": []string{"PORT=8088"}},
			"mounts":  []map[string]any{{"destination": "/etc/hosts", "type": "bind", "source": "/var/lib/kubelet/pods/p/etc-hosts", "options": []string{"rbind", "rw"}}}})
	}
	crio := append([]member2{
		{name: "config.dump", data: jsonBytes(t, cfg)},
		{name: "spec.dump", data: spec(map[string]string{
			annotationManager: "cri-o", annotationCRIOMetadata: `{"name":"counter","attempt":0}`,
			annotationCRIOPodName: "counters", annotationCRIOPodNS: "default",
			annotationCRIUVersion: "3.19", annotationKernel: "6.5.0",
		})},
		{name: "bind.mounts", data: []byte(`[]`)},
		{name: "rootfs-diff.tar", data: rootfsDiffTar(t)},
		{name: "deleted.files", data: []byte(`["/etc/motd"]`)},
		{name: "io.kubernetes.cri-o.LogPath", data: []byte("log line\n")},
	}, checkpointMembers(t)...)

	var gz bytes.Buffer
	gz.Write(gzipOf(t, rootfsDiffTar(t)))
	containerd := append([]member2{
		{name: "config.dump", data: jsonBytes(t, cfg)},
		{name: "spec.dump", data: spec(map[string]string{
			annotationCRIContainer: "counter", annotationCRISandbox: "counters", annotationCRISandboxNS: "default",
		})},
		{name: "status.dump", data: []byte(`{"id":"c0ffee","metadata":{"name":"counter"},"image":{"image":"quay.io/example/counter:latest"},"image_ref":"sha256:abcd","mounts":[{"container_path":"/data","host_path":"/srv/data","readonly":true}]}`)},
		{name: "status", data: []byte(`{"CreatedAt":1,"StartedAt":2,"Pid":4242}`)},
		{name: "container.log", data: []byte("log\n")},
		{name: "dump.log", data: []byte("(00.000000) Version: 4.0\n")},
		{name: "rootfs-diff.tar", data: gz.Bytes()},
	}, checkpointMembers(t)...)

	for _, tc := range []struct {
		name    string
		members []member2
		format  Format
		engine  string
		criu    string
	}{
		{"cri-o", crio, FormatCRIO, "CRI-O", "3.19"},
		{"containerd", containerd, FormatContainerd, "containerd", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, err := readBytes(t, tarOf(t, tc.members))
			if err != nil {
				t.Fatal(err)
			}
			defer a.Close()
			r := a.Report()
			c := r.Container
			if c.Format != tc.format || c.Engine != tc.engine || c.Name != "counter" || c.Pod != "counters" || c.Namespace != "default" ||
				c.Image != "quay.io/example/counter:latest" || c.ImageID == "" || !c.Created.Equal(created) ||
				!r.Checkpoint.CheckpointedAt.Equal(checkpointed) || r.Checkpoint.CRIUVersion != tc.criu {
				t.Errorf("container %+v, checkpoint %+v", c, r.Checkpoint)
			}
			if !slices.Equal(c.Env, []string{"PORT=8088"}) || len(c.Mounts) != 1 || c.Mounts[0].Destination != "/etc/hosts" {
				t.Errorf("env %q mounts %+v", c.Env, c.Mounts)
			}
			if len(r.RootfsDiff.Changed) != 2 || r.RootfsDiff.Changed[1].Path != "etc/app.conf" {
				t.Errorf("rootfs diff %+v", r.RootfsDiff)
			}
			if len(r.Processes) != 2 || !slices.Equal(r.Processes[0].Cmdline, synthArgv) {
				t.Errorf("processes %+v", r.Processes)
			}
			if ms, err := a.Grep(synthMarker); err != nil || len(ms) != 1 {
				t.Errorf("grep = %+v, %v", ms, err)
			}
			var out bytes.Buffer
			RenderWith(&out, r, AllSections)
			if !strings.Contains(out.String(), "Pod: default/counters") {
				t.Errorf("rendering:\n%s", out.String())
			}
		})
	}
}

// TestDockerArchive: orchestrate's own Docker archive (engine/docker's
// layout): the manifest first, CRIU's images, the overlay upper directory
// as a tree with whiteouts, volumes as trees, the trailer last.
func TestDockerArchive(t *testing.T) {
	manifest := map[string]any{
		"format": 1, "id": "d0c4e7", "docker_id": "d0c4e7aaaa", "name": "web", "image": "localhost/web:1", "image_id": "sha256:feed",
		"checkpoint":  "orc-1",
		"config":      map[string]any{"Hostname": "webhost", "Env": []string{"TOKEN=docker-secret"}, "Cmd": []string{"-port", "80"}, "Entrypoint": []string{"/web"}},
		"host_config": map[string]any{"NetworkMode": "none"},
		"mounts":      []map[string]any{{"Type": "volume", "Name": "cache", "Source": "/var/lib/docker/volumes/cache/_data", "Destination": "/cache", "RW": true}},
	}
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	write := func(h *tar.Header, data []byte) {
		t.Helper()
		h.Size = int64(len(data))
		if h.Mode == 0 {
			h.Mode = 0o644
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		tw.Write(data)
	}
	write(&tar.Header{Name: DockerManifestFile, Typeflag: tar.TypeReg, ModTime: time.Unix(1700000000, 0)}, jsonBytes(t, manifest))
	n := 0
	for _, m := range checkpointMembers(t) {
		if m.name == "stats-dump" {
			m.name = "checkpoint/stats-dump"
		}
		if m.dir {
			write(&tar.Header{Name: m.name, Typeflag: tar.TypeDir, Mode: 0o700}, nil)
		} else {
			write(&tar.Header{Name: m.name, Typeflag: tar.TypeReg}, m.data)
		}
		n++
	}
	write(&tar.Header{Name: "rootfs/data/", Typeflag: tar.TypeDir, Mode: 0o755}, nil)
	write(&tar.Header{Name: "rootfs/data/hello.txt", Typeflag: tar.TypeReg}, []byte("hello\n"))
	write(&tar.Header{Name: "rootfs/etc/motd", Typeflag: tar.TypeChar}, nil)
	write(&tar.Header{Name: "volumes/cache/blob", Typeflag: tar.TypeReg}, []byte("12345"))
	write(&tar.Header{Name: DockerTrailerFile, Typeflag: tar.TypeReg}, jsonBytes(t, map[string]int{"entries": n + 5}))
	tw.Close()

	a, err := readBytes(t, b.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	r := a.Report()
	c := r.Container
	if c.Format != FormatDocker || c.Engine != "Docker" || c.Name != "web" || c.ID != "d0c4e7" || c.Image != "localhost/web:1" || c.ImageID != "sha256:feed" ||
		c.Hostname != "webhost" || !slices.Equal(c.Command, []string{"/web", "-port", "80"}) || !slices.Equal(c.Env, []string{"TOKEN=docker-secret"}) {
		t.Errorf("container %+v", c)
	}
	if len(c.Mounts) != 1 || c.Mounts[0].Destination != "/cache" || c.Mounts[0].Source != "cache" {
		t.Errorf("mounts %+v", c.Mounts)
	}
	d := r.RootfsDiff
	if !slices.Equal(d.Deleted, []string{"/etc/motd"}) || len(d.Changed) != 2 || d.Changed[1].Path != "data/hello.txt" {
		t.Errorf("rootfs diff %+v", d)
	}
	if len(r.Volumes) != 1 || r.Volumes[0] != (Volume{Name: "cache", Size: 5}) {
		t.Errorf("volumes %+v", r.Volumes)
	}
	if r.Checkpoint.Stats == nil || r.Checkpoint.Stats.PagesWritten != 262 {
		t.Errorf("stats %+v", r.Checkpoint.Stats)
	}
	if len(r.Processes) != 2 || r.Processes[0].State != "alive" {
		t.Errorf("processes %+v", r.Processes)
	}
	if ms, err := a.Grep(synthShmMarker); err != nil || len(ms) != 1 {
		t.Errorf("grep = %+v, %v", ms, err)
	}

	// Host facts go in before the trailer, which then counts them.
	var with bytes.Buffer
	fw := HostFactsWriter(&with, HostFacts{Host: "d1", CRIUVersion: "4.2.1", Kernel: "6.18.0"})
	fw.Write(b.Bytes())
	if err := fw.Close(); err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(&with)
	var names []string
	var last []byte
	for {
		h, err := tr.Next()
		if err != nil {
			break
		}
		names = append(names, h.Name)
		last, _ = io.ReadAll(tr)
	}
	if len(names) < 2 || names[len(names)-2] != HostFactsFile || names[len(names)-1] != DockerTrailerFile ||
		string(last) != fmt.Sprintf(`{"entries":%d}`, n+6) {
		t.Fatalf("entries end with %q, trailer %s", names[max(0, len(names)-3):], last)
	}
}

// TestHostFacts: the facts an agent adds to a Podman archive and to a
// Docker archive (before its trailer, which still counts every entry) fill
// the CRIU and kernel version fields.
func TestHostFacts(t *testing.T) {
	hf := HostFacts{Host: "edge-1", At: time.Date(2026, 5, 6, 7, 8, 9, 0, time.UTC), CRIUVersion: "4.2.1", Kernel: "6.18.0", Arch: "amd64", EngineVersion: "4.3.1"}
	// The synthetic Podman archive names versions in its annotations; drop
	// them so that the facts are what fills the fields.
	ms := synthMembers(t)
	for i, m := range ms {
		if m.name == "spec.dump" {
			ms[i].data = bytes.ReplaceAll(bytes.ReplaceAll(m.data, []byte(annotationCRIUVersion), []byte("x.criu")), []byte(annotationKernel), []byte("x.kernel"))
		}
	}
	podman := tarOf(t, ms)
	var out bytes.Buffer
	fw := HostFactsWriter(&out, hf)
	if _, err := fw.Write(podman); err != nil {
		t.Fatal(err)
	}
	if err := fw.Close(); err != nil {
		t.Fatal(err)
	}
	a, err := readBytes(t, out.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	ck := a.Report().Checkpoint
	if ck.CRIUVersion != "4.2.1" || ck.Kernel != "6.18.0" || ck.HostArch != "amd64" || ck.Host != "edge-1" {
		t.Fatalf("checkpoint = %+v", ck)
	}

	// Not a tar: the write or the close fails.
	fw = HostFactsWriter(io.Discard, hf)
	_, werr := fw.Write(bytes.Repeat([]byte{1}, 4096))
	if cerr := fw.Close(); werr == nil && cerr == nil {
		t.Fatal("a stream that is not a tar passed")
	}
}
