package cluster

import (
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
)

func TestNodeMetaFitsLimit(t *testing.T) {
	pub, _, _ := ed25519.GenerateKey(nil)
	m := nodeMeta{
		Raft: "255.255.255.255:65535", API: "255.255.255.255:65535", Transfer: "255.255.255.255:65535",
		Engine: "podman", Arch: "riscv64", CRIU: "4.2.1", Kernel: "6.18.44-fc-v669-with-a-long-suffix", CPUs: 128,
		MemTotal: 1 << 40, MemUsed: 1 << 39, Containers: 9999, InRaft: true,
		HostKey: pub, ClientKey: pub, Labels: map[string]string{"zone": "a"},
	}
	b := m.encode(metaLimit)
	if len(b) > metaLimit {
		t.Fatalf("meta is %d bytes", len(b))
	}
	var back nodeMeta
	if err := json.Unmarshal(b, &back); err != nil || back.Labels["zone"] != "a" || back.Trunc {
		t.Fatalf("small labels lost: %+v %v", back, err)
	}
	t.Logf("meta without labels: %d bytes of %d", len(b), metaLimit)

	for i := range 30 {
		m.Labels[fmt.Sprintf("label-%d", i)] = strings.Repeat("v", 20)
	}
	b = m.encode(metaLimit)
	if len(b) == 0 || len(b) > metaLimit {
		t.Fatalf("meta with many labels is %d bytes", len(b))
	}
	back = nodeMeta{}
	if err := json.Unmarshal(b, &back); err != nil || !back.Trunc || back.Labels != nil || string(back.HostKey) != string(pub) {
		t.Fatalf("truncated meta = %+v, %v", back, err)
	}
}

func TestSecretDerivation(t *testing.T) {
	a, b := []byte("secret-one-secret-one"), []byte("secret-two-secret-two")
	if string(GossipKey(a)) == string(GossipKey(b)) || APIToken(a) == APIToken(b) {
		t.Fatal("different secrets derive the same keys")
	}
	if string(GossipKey(a)) != string(GossipKey(a)) || len(GossipKey(a)) != 32 {
		t.Fatal("gossip key not deterministic or not 32 bytes")
	}
	if APIToken(a) == fmt.Sprintf("%x", GossipKey(a)) {
		t.Fatal("API token equals the gossip key")
	}
	// Two processes with the same secret trust each other's certificates;
	// a different secret does not.
	ta, _ := newClusterTLS(a)
	ta2, _ := newClusterTLS(a)
	tb, _ := newClusterTLS(b)
	leaf := func(c *clusterTLS) []byte { return c.leaf.Certificate[0] }
	verify := func(pool *clusterTLS, cert []byte) error {
		return verifyLeaf(pool, cert)
	}
	if err := verify(ta, leaf(ta2)); err != nil {
		t.Errorf("same secret: %v", err)
	}
	if err := verify(tb, leaf(ta)); err == nil {
		t.Error("a certificate from another secret verified")
	}
}
