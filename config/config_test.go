package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
)

func writeFile(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "orchestrate.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

const base = `
node:
  name: h1
  data_dir: /tmp/x
  labels: {zone: a}
cluster:
  bind: 10.99.0.1:7946
  join: ["10.99.0.2:7946"]
  bootstrap_expect: 3
  secret_file: /etc/orchestrate/cluster.key
  probe_interval: 250ms
api:
  socket: /run/orchestrate/agent.sock
engine:
  type: podman
  socket: unix:///run/podman/podman.sock
transfer:
  bind: 10.99.0.1:7922
`

func TestLoadFileAndDerived(t *testing.T) {
	c, err := Load(writeFile(t, base), nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.Node.Name != "h1" || c.Node.Labels["zone"] != "a" || c.Cluster.BootstrapExpect != 3 ||
		len(c.Cluster.Join) != 1 || c.Cluster.ProbeInterval != 250*time.Millisecond {
		t.Errorf("config = %+v", c)
	}
	if c.Cluster.RaftBind != "10.99.0.1:7947" || c.API.Bind != "10.99.0.1:7948" || c.Transfer.Bind != "10.99.0.1:7922" {
		t.Errorf("derived addresses: raft %s api %s transfer %s", c.Cluster.RaftBind, c.API.Bind, c.Transfer.Bind)
	}
	if c.Cluster.MaxVoters != 3 || c.Cluster.DeadRemoveAfter != time.Hour {
		t.Errorf("defaults: %+v", c.Cluster)
	}
	cc := c.ClusterConfig()
	if cc.NodeName != "h1" || cc.RaftBindAddr != "10.99.0.1:7947" || cc.ProbeInterval != 250*time.Millisecond {
		t.Errorf("cluster config = %+v", cc)
	}
}

func TestPrecedence(t *testing.T) {
	file := writeFile(t, base)
	t.Setenv("ORCHESTRATE_NODE_NAME", "from-env")
	t.Setenv("ORCHESTRATE_CLUSTER_BOOTSTRAP_EXPECT", "5")
	t.Setenv("ORCHESTRATE_CLUSTER_JOIN", "10.99.0.3:7946,10.99.0.4:7946")
	t.Setenv("ORCHESTRATE_NODE_LABELS", "zone=b,rack=r1")
	fs := pflag.NewFlagSet("agent", pflag.ContinueOnError)
	AddFlags(fs)
	if err := fs.Parse([]string{"--node-name", "from-flag", "--cluster-bind", "10.99.0.9:7946"}); err != nil {
		t.Fatal(err)
	}
	c, err := Load(file, fs)
	if err != nil {
		t.Fatal(err)
	}
	if c.Node.Name != "from-flag" {
		t.Errorf("flag lost to %q", c.Node.Name)
	}
	if c.Cluster.Bind != "10.99.0.9:7946" || c.Cluster.RaftBind != "10.99.0.9:7947" {
		t.Errorf("bind %s raft %s", c.Cluster.Bind, c.Cluster.RaftBind)
	}
	if c.Cluster.BootstrapExpect != 5 {
		t.Errorf("env lost: bootstrap_expect %d", c.Cluster.BootstrapExpect)
	}
	if len(c.Cluster.Join) != 2 || c.Cluster.Join[1] != "10.99.0.4:7946" {
		t.Errorf("join from env = %q", c.Cluster.Join)
	}
	if c.Node.Labels["rack"] != "r1" || c.Node.Labels["zone"] != "b" {
		t.Errorf("labels from env = %v", c.Node.Labels)
	}
	if c.Engine.Socket != "unix:///run/podman/podman.sock" {
		t.Errorf("file lost: %s", c.Engine.Socket)
	}
}

func TestEnvOnlyWithoutFile(t *testing.T) {
	t.Setenv("ORCHESTRATE_NODE_NAME", "e1")
	t.Setenv("ORCHESTRATE_CLUSTER_SECRET_FILE", "/k")
	t.Setenv("ORCHESTRATE_CLUSTER_BIND", "127.0.0.5:7946")
	c, err := Load("", nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.Node.Name != "e1" || c.Cluster.RaftBind != "127.0.0.5:7947" {
		t.Errorf("config = %+v", c)
	}
}

func TestInvalid(t *testing.T) {
	tests := []struct {
		name, body string
		env        map[string]string
		want       []string
	}{
		{"unknown key", base + "\ncluster2: {}\n", nil, []string{`unknown key "cluster2"`}},
		{"typo in section", strings.Replace(base, "bootstrap_expect", "bootstrap_expct", 1), nil,
			[]string{`unknown key "cluster.bootstrap_expct"`, `did you mean "cluster.bootstrap_expect"`}},
		{"bad duration", strings.Replace(base, "250ms", "250", 1), nil, []string{"cluster.probe_interval", `"250" is not a duration`}},
		{"bad address", strings.Replace(base, "10.99.0.1:7922", "10.99.0.1", 1), nil, []string{"transfer.bind", `"10.99.0.1" is not an address`, "host:port"}},
		{"bad join", strings.Replace(base, `"10.99.0.2:7946"`, `"nowhere"`, 1), nil, []string{"cluster.join", `"nowhere"`}},
		{"bad int from env", base, map[string]string{"ORCHESTRATE_CLUSTER_BOOTSTRAP_EXPECT": "three"}, []string{"cluster.bootstrap_expect", `"three" is not a whole number`}},
		{"no secret", strings.Replace(base, "secret_file: /etc/orchestrate/cluster.key", "", 1), nil, []string{"cluster.secret_file", "keygen"}},
		{"raft needs an IP", strings.Replace(base, "10.99.0.1:7946", "0.0.0.0:7946", 1), nil, []string{"cluster.raft_bind", "concrete IP"}},
		{"engine type", strings.Replace(base, "type: podman", "type: lxc", 1), nil, []string{"engine.type", `"lxc"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			_, err := Load(writeFile(t, tt.body), nil)
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("err = %v, want ErrInvalid", err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

func TestFlagAndEnvNames(t *testing.T) {
	if got := FlagName("cluster.bootstrap_expect"); got != "cluster-bootstrap-expect" {
		t.Error(got)
	}
	if got := EnvName("node.name"); got != "ORCHESTRATE_NODE_NAME" {
		t.Error(got)
	}
	for _, k := range []string{"node.name", "node.data_dir", "node.labels", "cluster.bind", "cluster.raft_bind", "cluster.join",
		"cluster.bootstrap_expect", "cluster.secret_file", "api.bind", "api.socket", "engine.type", "engine.socket", "transfer.bind"} {
		found := false
		for _, kk := range Keys() {
			found = found || kk == k
		}
		if !found {
			t.Errorf("contract key %s missing", k)
		}
	}
}

// TestExampleFile keeps the documented example in step with the keys.
func TestExampleFile(t *testing.T) {
	b, err := os.ReadFile("../docs/config.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Load("../docs/config.example.yaml", nil); err != nil {
		t.Fatalf("example does not load: %v", err)
	}
	for _, k := range Keys() {
		parts := strings.Split(k, ".")
		ok := strings.Contains(string(b), "\n"+parts[0]+":")
		for _, p := range parts[1:] {
			ok = ok && strings.Contains(string(b), " "+p+":")
		}
		if !ok {
			t.Errorf("example lacks %s", k)
		}
	}
}
