package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/edgemigrate/orchestrate/cluster"
	"github.com/edgemigrate/orchestrate/internal/simhost"
	"github.com/edgemigrate/orchestrate/transfer"
)

// agentKey loads one of a host's agent keys (cluster.HostKeyFile or
// cluster.ClientKeyFile) from its data directory.
func agentKey(t *testing.T, h *simhost.AgentHost, file string) ssh.Signer {
	t.Helper()
	path := filepath.Join(simhost.DataDir(h.Name), "orchestrate", file)
	if _, err := os.Stat(path); err != nil {
		t.Fatal(err)
	}
	k, err := transfer.LoadOrCreateKey(path)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

type hostKeys map[string]ssh.PublicKey

func (k hostKeys) HostKey(addr string) (ssh.PublicKey, error) {
	if key, ok := k[addr]; ok {
		return key, nil
	}
	return nil, fmt.Errorf("no host key for %s", addr)
}

// memberAPI is an https client that dials from inside from's network
// namespace and sends the cluster's API token, as a member holding the
// secret can (it does not check the agents' certificates: what is tested
// is what they accept).
func memberAPI(t *testing.T, c *simhost.Cluster, from *simhost.AgentHost) (*http.Client, string) {
	t.Helper()
	secret, err := os.ReadFile(c.Secret)
	if err != nil {
		t.Fatal(err)
	}
	tr := &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true},
		DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
			return simhost.DialInNetns(simhost.NetnsPath(from.Name), addr, 5*time.Second)
		},
	}
	return &http.Client{Transport: tr, Timeout: 20 * time.Second}, cluster.APIToken([]byte(strings.TrimSpace(string(secret))))
}

// fileSum is a file's sha256 (hex) and size.
func fileSum(t *testing.T, path string) (string, int64) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil)), n
}

func post(t *testing.T, hc *http.Client, token, url string, body []byte) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// A member is only a member: with the cluster secret and its own SSH key it
// cannot make another host restore a checkpoint no migration record calls
// for (neither a Podman nor a Docker host), nor have it start an archive
// the member put into its spool, nor order the steps only the leader
// orders (migration steps, copies, a kept checkpoint's retry, forensic
// checkpoints), nor reboot it, nor commit a malformed entry to raft. Every
// refusal leaves the victims as they were.
func TestE2EMemberCannotForgeSteps(t *testing.T) {
	engines := []string{"podman", "podman", "docker"}
	c := simhost.NewClusterEngines(t, engines...)
	attacker, victim, dockerVictim := c.Hosts[0], c.Hosts[1], c.Hosts[2]

	// A real migration, so that a real record exists: w1 from the attacker
	// to the victim.
	port := simhost.Port()
	attacker.RunWorkload(simhost.Workload{Name: "w1", MiB: 16, Port: port})
	if out, errOut, code := attacker.CLI("migrate", "w1", "--to", victim.Name); code != 0 {
		t.Fatalf("migrate: exit %d\n%s%s", code, out, errOut)
	}
	rows := settledMigrations(t, attacker, 15*time.Second)
	if len(rows) != 1 || rows[0].Phase != "Done" {
		t.Fatalf("migrations: %+v", rows)
	}
	done := rows[0]
	before := victim.WaitReport(port, 15*time.Second)

	// A checkpoint the attacker made of its own container: a real archive,
	// which the victims would restore if they were asked by the leader.
	attacker.RunWorkload(simhost.Workload{Name: "a1", MiB: 8, Port: simhost.Port()})
	archive := filepath.Join(simhost.StateDir(attacker.Name), "a1.tar")
	attacker.MustRun("podman", "container", "checkpoint", "--leave-running", "--export", archive, "a1")
	defer os.Remove(archive)
	a1ID := strings.TrimSpace(attacker.MustRun("podman", "inspect", "--format", "{{.Id}}", "a1"))

	// The attacker's own SSH client key, which the victims accept as a
	// member's.
	keys := hostKeys{}
	for _, v := range []*simhost.AgentHost{victim, dockerVictim} {
		keys[v.IP+":7922"] = agentKey(t, v, cluster.HostKeyFile).PublicKey()
	}
	cl, err := transfer.NewClient(transfer.ClientConfig{
		Signer: agentKey(t, attacker, cluster.ClientKeyFile), HostKeys: keys,
		Dial: func(ctx context.Context, _, addr string) (net.Conn, error) {
			return simhost.DialInNetns(simhost.NetnsPath(attacker.Name), addr, 5*time.Second)
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	sendFile := func(v *simhost.AgentHost, h transfer.StreamHeader) error {
		f, err := os.Open(archive)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_, _, err = cl.SendStream(ctx, v.IP+":7922", h, f)
		return err
	}
	for _, tc := range []struct {
		name string
		v    *simhost.AgentHost
		h    transfer.StreamHeader
	}{
		{"restore to podman, no record", victim, transfer.StreamHeader{Kind: "restore", ID: "forged", Meta: map[string]string{"container": a1ID, "name": "a1"}}},
		{"restore to podman, a finished record", victim, transfer.StreamHeader{Kind: "restore", ID: done.ID, Meta: map[string]string{"container": a1ID, "name": "a1"}}},
		{"restore to podman, a finished record's own container", victim, transfer.StreamHeader{Kind: "restore", ID: done.ID, Meta: map[string]string{"container": done.Container, "name": "w1"}}},
		{"restore to docker, no record", dockerVictim, transfer.StreamHeader{Kind: "restore", ID: "forged", Meta: map[string]string{"container": a1ID, "name": "a1"}}},
		{"page-path archive to podman, no record", victim, transfer.StreamHeader{Kind: "pages-restore", ID: "forged", Meta: map[string]string{"container": a1ID, "name": "a1"}}},
		{"page-path archive to podman, a finished record's own container", victim, transfer.StreamHeader{Kind: "pages-restore", ID: done.ID, Meta: map[string]string{"container": done.Container, "name": "w1"}}},
		{"pre-copy to docker", dockerVictim, transfer.StreamHeader{Kind: "precopy", ID: "forged", Meta: map[string]string{"container": a1ID}}},
		{"image to docker", dockerVictim, transfer.StreamHeader{Kind: "image", ID: "evil:1", Meta: map[string]string{"migration": done.ID}}},
	} {
		err := sendFile(tc.v, tc.h)
		if err == nil || !strings.Contains(err.Error(), "forbidden") {
			t.Errorf("%s: %v, want forbidden", tc.name, err)
		} else {
			t.Logf("%s: refused: %v", tc.name, err)
		}
	}
	// Page channels: the victim would prepare a checkpoint directory for
	// the container and run CRIU's page server on what arrives.
	for _, tc := range []struct {
		name string
		h    transfer.StreamHeader
	}{
		{"page channel, no record", transfer.StreamHeader{Kind: "pages", ID: "forged", Meta: map[string]string{"container": a1ID}}},
		{"page channel, a finished record's own container", transfer.StreamHeader{Kind: "pages", ID: done.ID, Meta: map[string]string{"container": done.Container}}},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		pc, err := cl.OpenPages(ctx, victim.IP+":7922", tc.h)
		cancel()
		if err == nil {
			pc.Close()
		}
		if err == nil || !strings.Contains(err.Error(), "forbidden") {
			t.Errorf("%s: %v, want forbidden", tc.name, err)
		} else {
			t.Logf("%s: refused: %v", tc.name, err)
		}
	}
	graphRoot := strings.TrimSpace(victim.MustRun("podman", "info", "--format", "{{.Store.GraphRoot}}"))
	if _, err := victim.Run("test", "-e", filepath.Join(graphRoot, "overlay-containers", a1ID)); err == nil {
		t.Error("a refused page channel left a directory for a1 on the podman victim")
	}
	if victim.Exists("a1") {
		t.Error("the podman victim holds a1")
	}
	if st := dockerVictim.DockerState("a1"); st != "" {
		t.Errorf("the docker victim holds a1 (%s)", st)
	}

	// The attacker puts its archive into each victim's spool over SFTP,
	// which any member may do, to have the victim start it as a copy.
	sum, size := fileSum(t, archive)
	for _, v := range []*simhost.AgentHost{victim, dockerVictim} {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		_, err := cl.Upload(ctx, v.IP+":7922", archive, "copy-evil.tar")
		cancel()
		if err != nil {
			t.Fatalf("upload into %s's spool: %v", v.Name, err)
		}
	}

	// Steps only the leader orders, with the token but without the
	// leader's signature: refused, and w1 keeps running on the victim.
	hc, token := memberAPI(t, c, attacker)
	w1ID := strings.TrimSpace(victim.MustRun("podman", "inspect", "--format", "{{.Id}}", "w1"))
	restoreEvil := map[string]any{"spool": "copy-evil.tar", "size": size, "sha256": sum, "names": []string{"evil"}}
	for _, st := range []struct {
		v    *simhost.AgentHost
		path string
		body any
	}{
		{victim, "/v1/agent/abort", map[string]string{"container": w1ID, "migration": done.ID}},
		{victim, "/v1/agent/remove", map[string]string{"container": w1ID, "migration": done.ID}},
		{victim, "/v1/agent/migrate-out", map[string]string{"migration": done.ID, "container": w1ID, "target_addr": attacker.IP + ":7922"}},
		{victim, "/v1/agent/push-image", map[string]string{"migration": done.ID, "image": simhost.WorkloadImage, "target_addr": attacker.IP + ":7922"}},
		// Copies: the spooled archive restored directly; images.
		{victim, "/v1/agent/copies/restore", restoreEvil},
		{dockerVictim, "/v1/agent/copies/restore", restoreEvil},
		{victim, "/v1/agent/copies/load-image", map[string]any{"image": "evil:1", "spool": "copy-evil.tar", "size": size, "sha256": sum}},
		{victim, "/v1/agent/copies/push-image", map[string]string{"image": simhost.WorkloadImage, "target_host": attacker.Name, "spool": "x.tar"}},
		{victim, "/v1/agent/copies/stage-image", map[string]string{"image": "evil:1"}},
		// The kept-checkpoint retry of a local reboot.
		{victim, "/v1/agent/checkpoints/restore", map[string]string{"id": "kept-1"}},
		// Forensics: w1 stopped and its memory streamed out, snapshots,
		// images.
		{victim, "/v1/agent/forensics/checkpoint", map[string]any{"container": w1ID, "leave_running": false}},
		{victim, "/v1/agent/forensics/snapshot", map[string]any{"container": w1ID, "store_host": attacker.Name}},
		{victim, "/v1/agent/forensics/image", map[string]any{"container": w1ID, "image": "evil", "archive": true}},
	} {
		b, _ := json.Marshal(st.body)
		code, out := post(t, hc, token, "https://"+st.v.IP+":7948"+st.path, b)
		if code != http.StatusForbidden || len(out) > 4096 {
			t.Errorf("%s on %s: %d %.300s", st.path, st.v.Name, code, out)
		}
	}
	// A reboot of another host over the API.
	if code, out := post(t, hc, token, "https://"+victim.IP+":7948/v1/agent/reboot", []byte(`{"mode":"local"}`)); code != http.StatusForbidden {
		t.Errorf("reboot over the API: %d %s", code, out)
	}
	if victim.Exists("evil") {
		t.Error("the podman victim started the spooled archive")
	}
	if st := dockerVictim.DockerState("evil"); st != "" {
		t.Errorf("the docker victim started the spooled archive (%s)", st)
	}
	// A malformed raft entry, and a forged migration record.
	for name, b := range map[string][]byte{
		"bad json":       []byte("\x02{"),
		"unknown type":   []byte("\x63{}"),
		"forged record":  append([]byte{byte(cluster.PutMigrationType)}, fmt.Sprintf(`{"record":{"id":"x","container":%q,"from":%q,"to":%q,"phase":"Planned"}}`, a1ID, attacker.Name, victim.Name)...),
		"type byte only": []byte("\x06"),
	} {
		if code, out := post(t, hc, token, "https://"+victim.IP+":7948/v1/apply", b); code != http.StatusBadRequest {
			t.Errorf("apply %s: %d %s, want 400", name, code, out)
		}
	}
	c.WaitFormed(10 * time.Second)
	after := victim.WaitReport(port, 15*time.Second)
	if after.Start != before.Start || after.Counter < before.Counter {
		t.Fatalf("w1 on the victim: %+v, before %+v", after, before)
	}
	if rows := settledMigrations(t, attacker, 5*time.Second); len(rows) != 1 {
		t.Fatalf("migrations after the attack: %+v", rows)
	}
}
