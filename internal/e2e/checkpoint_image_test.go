//go:build remote

package e2e

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/edgemigrate/orchestrate/cluster/forensics"
	"github.com/edgemigrate/orchestrate/engine"
	"github.com/edgemigrate/orchestrate/engine/archive"
	"github.com/edgemigrate/orchestrate/engine/podman"
	"github.com/edgemigrate/orchestrate/internal/simhost"
)

// TestE2ECheckpointImage proves checkpoint images end to end with real
// Podman, CRIU and a real registry:
//  1. `orchestrate checkpoint --image` builds one on h1 (asked through h2's
//     agent) with Podman's annotations;
//  2. plain Podman moves it to h2 (`podman save --format oci-archive`,
//     `podman load`) and restores it there (`podman container restore
//     NAME`): the workload keeps its memory checksum and its counter;
//  3. with a registry (Debian's docker-registry in h1's network namespace,
//     its config and storage under the test's temp dir), a push that
//     verifies TLS is refused and leaves the workload running, and with
//     --tls-verify=false it is pushed;
//  4. h1 pulls it back and restores it through
//     forensics.CheckpointImageArchive and the Podman engine;
//  5. --output writes the image as an OCI archive that `podman load` reads;
//  6. `orchestrate restore --image` pulls the pushed image onto h2 and
//     starts a copy there with a new name and the same memory.
func TestE2ECheckpointImage(t *testing.T) {
	c := simhost.NewCluster(t, 2)
	h1, h2 := c.Hosts[0], c.Hosts[1]
	port := simhost.Port()
	h1.RunWorkload(simhost.Workload{Name: "ci1", MiB: 16, Port: port})
	before, err := h1.Probe(port)
	if err != nil {
		t.Fatal(err)
	}
	workloadID := strings.TrimSpace(h1.MustRun("podman", "image", "inspect", "--format", "{{.Id}}", simhost.WorkloadImage))

	// 1. Built on h1, loaded into its Podman; ci1 stops there.
	start := time.Now()
	var res forensics.ImageResult
	out, errOut, code := h2.CLI("checkpoint", "ci1", "--image", "ckpt-ci1", "--json")
	if code != 0 {
		t.Fatalf("checkpoint --image: exit %d\n%s%s", code, out, errOut)
	}
	jsonOf(t, out, &res)
	t.Logf("checkpoint --image: %s (%s, frozen %s)", res.Image, time.Since(start).Round(time.Millisecond), res.Stats.FrozenTime)
	if res.Image != "localhost/ckpt-ci1:latest" || !res.Loaded || res.Pushed || res.Host != h1.Name || res.Name != "ci1" {
		t.Fatalf("result %+v", res)
	}
	if h1.Running("ci1") {
		t.Fatal("ci1 runs on h1 after a checkpoint without --leave-running")
	}
	ann := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(h1.MustRun("podman", "image", "inspect", "--format",
		"{{range $k, $v := .Annotations}}{{$k}}={{$v}}\n{{end}}", res.Image)), "\n") {
		k, v, _ := strings.Cut(line, "=")
		ann[k] = v
	}
	for k, want := range map[string]string{archive.AnnotationCheckpointName: "ci1", archive.AnnotationRuntimeName: "runc",
		archive.AnnotationRootfsImageID: workloadID, archive.AnnotationRootfsImageName: simhost.WorkloadImage, archive.AnnotationPodmanVersion: "4.3.1"} {
		if ann[k] != want {
			t.Errorf("annotation %s = %q, want %q", k, ann[k], want)
		}
	}
	if !strings.HasPrefix(ann[archive.AnnotationCRIUVersion], "4") || len(ann[archive.AnnotationCRIUVersion]) != 5 || ann[archive.AnnotationHostKernel] == "" {
		t.Errorf("annotations %v", ann)
	}

	// 2. Plain Podman moves it to h2 and restores it there.
	dir := t.TempDir()
	file := filepath.Join(dir, "ckpt-ci1.oci.tar")
	start = time.Now()
	h1.MustRun("podman", "save", "--format", "oci-archive", "-o", file, res.Image)
	h2.MustRun("podman", "load", "-i", file)
	h2.MustRun("podman", "container", "restore", res.Image)
	restored := continued(t, h2, port, before)
	t.Logf("podman save, load and restore on %s: %s; counter %d, checksum %s as before", h2.Name, time.Since(start).Round(time.Millisecond), restored.Counter, restored.Checksum)

	// 3. A registry: TLS verification is on unless turned off.
	reg := startRegistry(t, h1.Host, dir)
	out, errOut, code = h1.CLI("checkpoint", "ci1", "--host", h2.Name, "--image", "ckpt-ci1:v2", "--registry", reg)
	if code != 1 || !strings.Contains(errOut, "push") || !strings.Contains(errOut, "HTTP") {
		t.Fatalf("push to a plain-HTTP registry with TLS verification: exit %d\n%s%s", code, out, errOut)
	}
	continued(t, h2, port, restored)
	start = time.Now()
	out, errOut, code = h1.CLI("checkpoint", "ci1", "--host", h2.Name, "--image", "ckpt-ci1:v2", "--registry", reg, "--tls-verify=false", "--json")
	if code != 0 {
		t.Fatalf("checkpoint --image --registry: exit %d\n%s%s", code, out, errOut)
	}
	jsonOf(t, out, &res)
	t.Logf("checkpoint --image, load and push: %s", time.Since(start).Round(time.Millisecond))
	if want := reg + "/ckpt-ci1:v2"; res.Image != want || !res.Pushed || res.Host != h2.Name {
		t.Fatalf("pushed result %+v, want %s pushed from %s", res, want, h2.Name)
	}

	// 4. h1 pulls it and restores it through the function `orchestrate
	// restore` uses, once the stopped original is gone.
	h1.MustRun("podman", "rm", "-f", "-t", "0", "ci1")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	eng, err := podman.New(ctx, podman.Config{Socket: h1.Host.Socket})
	if err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	rc, info, err := forensics.CheckpointImageArchive(ctx, eng, res.Image, engine.RegistryOptions{TLSVerify: false})
	if err != nil {
		t.Fatal(err)
	}
	ctr, _, err := eng.Restore(ctx, rc, engine.RestoreOptions{})
	rc.Close()
	if err != nil {
		t.Fatalf("restore from %s: %v", res.Image, err)
	}
	if info.ID != res.ImageID || ctr.Name != "ci1" {
		t.Errorf("pulled image %+v, restored %+v", info, ctr)
	}
	again := continued(t, h1, port, restored)
	t.Logf("pull and restore on %s through CheckpointImageArchive: %s; counter %d", h1.Name, time.Since(start).Round(time.Millisecond), again.Counter)

	// 5. --output: an OCI archive podman load reads, names and annotates.
	oci := filepath.Join(dir, "ci1-oci.tar")
	out, errOut, code = h2.CLI("checkpoint", "ci1", "--leave-running", "--image", "ckpt-ci1:oci", "--output", oci)
	if code != 0 {
		t.Fatalf("checkpoint --image --output: exit %d\n%s%s", code, out, errOut)
	}
	h2.MustRun("podman", "load", "-i", oci)
	if got := strings.TrimSpace(h2.MustRun("podman", "image", "inspect", "--format", "{{index .Annotations \""+archive.AnnotationCheckpointName+"\"}}", "localhost/ckpt-ci1:oci")); got != "ci1" {
		t.Errorf("loaded OCI archive: checkpoint name %q", got)
	}
	continued(t, h1, port, again)

	// 6. orchestrate restore --image: h2 pulls the pushed image (plain HTTP
	// registry: --tls-verify=false) and starts a copy under a new name; the
	// stopped ci1 left on h2 by step 3 goes first, its port is the copy's.
	h2.MustRun("podman", "rm", "-f", "-t", "0", "ci1")
	start = time.Now()
	out, errOut, code = h1.CLI("restore", "--image", res.Image, "--host", h2.Name, "--name", "ci1-copy", "--tls-verify=false")
	if code != 0 {
		t.Fatalf("restore --image: exit %d\n%s%s", code, out, errOut)
	}
	copied := continued(t, h2, port, restored)
	t.Logf("restore --image on %s: %s; counter %d, checksum %s\n%s", h2.Name, time.Since(start).Round(time.Millisecond), copied.Counter, copied.Checksum, out)
	if !h2.Running("ci1-copy") {
		t.Fatal("no ci1-copy on h2")
	}
	if out, errOut, code := h1.CLI("restore", "snap-x", "--tls-verify=false"); code != 2 {
		t.Errorf("--tls-verify without --image: exit %d, want 2\n%s%s", code, out, errOut)
	}

	// Usage errors: exit 2, before anything is asked of an agent.
	for _, args := range [][]string{
		{"checkpoint", "ci1", "--image", "x", "--store"},
		{"checkpoint", "ci1", "--image", "x", "--output", oci, "--registry", reg},
		{"checkpoint", "ci1", "--output", oci, "--registry", reg},
		{"checkpoint", "ci1", "--store", "--tls-verify=false"},
	} {
		if out, errOut, code := h1.CLI(args...); code != 2 {
			t.Errorf("%v: exit %d, want 2\n%s%s", args, code, out, errOut)
		}
	}
}

// startRegistry runs Debian's docker-registry inside h's network namespace
// on h's address, with its config and storage under dir, until the test
// ends. It returns the registry's host:port.
func startRegistry(t *testing.T, h *simhost.Host, dir string) string {
	t.Helper()
	bin, err := exec.LookPath("docker-registry")
	if err != nil {
		t.Fatalf("docker-registry is not installed (scripts/install-test-tools.sh): %v", err)
	}
	addr := fmt.Sprintf("%s:%d", h.IP, simhost.Port())
	cfg := filepath.Join(dir, "registry.yml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(`version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: %s
  delete:
    enabled: true
http:
  addr: %s
`, filepath.Join(dir, "registry"), addr)), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := h.Command(context.Background(), bin, "serve", cfg)
	logf, err := os.Create(filepath.Join(dir, "registry.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); logf.Close(); close(done) }()
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
		}
	})
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if registryUp(h, addr) {
			return addr
		}
		select {
		case <-done:
			b, _ := os.ReadFile(filepath.Join(dir, "registry.log"))
			t.Fatalf("docker-registry exited:\n%s", b)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("docker-registry on %s did not answer", addr)
		}
	}
}

// registryUp asks the registry's API root from inside h.
func registryUp(h *simhost.Host, addr string) bool {
	conn, err := simhost.DialInNetns(simhost.NetnsPath(h.Name), addr, time.Second)
	if err != nil {
		return false
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := fmt.Fprintf(conn, "GET /v2/ HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", addr); err != nil {
		return false
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// TestBenchCheckpointImage is part of `make bench`: the wall time of a
// leave-running checkpoint image (`orchestrate checkpoint --image`: dump,
// spool, build, load into Podman), against, in the same run, a
// leave-running snapshot to a file (`checkpoint --output`) and Podman's own
// `podman container checkpoint --create-image` on the host, at 64 and 256
// MiB. It prints min / median of 3.
func TestBenchCheckpointImage(t *testing.T) {
	if os.Getenv("ORCHESTRATE_BENCH") == "" {
		t.Skip("set ORCHESTRATE_BENCH=1 (make bench)")
	}
	c := simhost.NewCluster(t, 1)
	h := c.Hosts[0]
	dir := t.TempDir()
	var rows []string
	for _, mib := range []int{64, 256} {
		name := fmt.Sprintf("bi%d", mib)
		h.RunWorkload(simhost.Workload{Name: name, MiB: mib, Port: simhost.Port()})
		cli := func(args ...string) func() {
			return func() {
				if out, errOut, code := h.CLI(args...); code != 0 {
					t.Fatalf("%v: exit %d\n%s%s", args, code, out, errOut)
				}
			}
		}
		file := filepath.Join(dir, name+".tar")
		img := "localhost/bench-" + name + ":latest"
		variants := []struct {
			what  string
			run   func()
			after func()
		}{
			{"checkpoint --output FILE", cli("checkpoint", name, "--leave-running", "--output", file), func() { _ = os.Remove(file) }},
			{"checkpoint --image NAME", cli("checkpoint", name, "--leave-running", "--image", img), func() { h.MustRun("podman", "rmi", img) }},
			{"podman checkpoint --create-image", func() {
				h.MustRun("podman", "container", "checkpoint", "--leave-running", "--create-image", img, name)
			}, func() { h.MustRun("podman", "rmi", img) }},
		}
		for _, v := range variants {
			var ds []time.Duration
			for i := 0; i < 3; i++ {
				start := time.Now()
				v.run()
				ds = append(ds, time.Since(start))
				v.after()
			}
			slices.Sort(ds)
			rows = append(rows, fmt.Sprintf("| %d MiB | %s | %s / %s |", mib, v.what, ds[0].Round(time.Millisecond), ds[1].Round(time.Millisecond)))
		}
		h.MustRun("podman", "rm", "-f", "-t", "0", name)
	}
	fmt.Println("\nLeave-running checkpoint image against a snapshot to a file and Podman's own --create-image, wall time, min / median of 3:")
	fmt.Println()
	fmt.Println("| workload | command | wall time |")
	fmt.Println("|---|---|---|")
	for _, r := range rows {
		fmt.Println(r)
	}
}
