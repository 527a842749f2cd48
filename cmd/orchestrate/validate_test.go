package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// `config validate` catches an engine socket nobody serves, naming the key.
func TestValidateUnreachableEngine(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "k")
	if _, errOut, code := runCLI(t, nil, "keygen", key); code != 0 {
		t.Fatal(errOut)
	}
	cfg := filepath.Join(dir, "c.yaml")
	body := "node: {name: x, data_dir: " + dir + "/d}\ncluster: {bind: 127.77.9.2:17946, secret_file: " + key + "}\n" +
		"engine: {type: podman, socket: unix://" + dir + "/nobody.sock}\n"
	if err := os.WriteFile(cfg, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	_, errOut, code := runCLI(t, nil, "config", "validate", cfg)
	if code != 2 || !strings.Contains(errOut, "engine.socket") || !strings.Contains(errOut, "does not answer") {
		t.Fatalf("exit %d, stderr %q; want exit 2 naming engine.socket", code, errOut)
	}
}
