package transfer_test

import (
	"context"
	"io"
	"log"

	"github.com/edgemigrate/orchestrate/engine"
	"github.com/edgemigrate/orchestrate/transfer"
)

// A migration streams a checkpoint straight from the source engine into the
// target engine's Restore: no copy on disk on either side, and Restore sees
// a verification error instead of EOF if anything was lost or altered.
func Example() {
	ctx := context.Background()
	var src engine.Checkpointer // the source host's engine
	var dst engine.Restorer     // the target host's engine

	// Target agent.
	hostKey, _ := transfer.LoadOrCreateKey("/var/lib/orchestrate/ssh_host_ed25519_key")
	peers := transfer.NewKeySet() // the cluster adds peers' client keys
	scfg := transfer.DefaultServerConfig()
	scfg.HostKey, scfg.Authorizer, scfg.SpoolDir = hostKey, peers, "/var/lib/orchestrate/spool"
	srv, err := transfer.NewServer(scfg)
	if err != nil {
		log.Fatal(err)
	}
	srv.Handle("restore", func(ctx context.Context, h transfer.StreamHeader, r io.Reader) ([]byte, error) {
		c, _, err := dst.Restore(ctx, r, engine.RestoreOptions{Name: h.Meta["name"]})
		return []byte(c.ID), err
	})
	go srv.Run(ctx)
	defer srv.Close()

	// Source agent.
	clientKey, _ := transfer.LoadOrCreateKey("/var/lib/orchestrate/ssh_client_ed25519_key")
	hostKeys := transfer.NewHostKeyMap() // the cluster sets peers' published host keys
	ccfg := transfer.DefaultClientConfig()
	ccfg.Signer, ccfg.HostKeys = clientKey, hostKeys
	client, err := transfer.NewClient(ccfg)
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()

	newID, stats, err := client.Stream(ctx, "10.99.0.2:7922", transfer.StreamHeader{Kind: "restore", ID: "web"},
		func(w io.Writer) error {
			_, err := src.Checkpoint(ctx, "web", w, engine.CheckpointOptions{Keep: true})
			return err
		})
	if err != nil {
		log.Fatal(err) // the target restored nothing; resume the source
	}
	log.Printf("restored as %s, %d bytes, %s", newID, stats.Bytes, stats.Compression)
}
