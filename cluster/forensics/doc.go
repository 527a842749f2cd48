// Package forensics owns forensic snapshots: checkpoints of a running
// container taken without stopping it (leave-running: a brief freeze), for
// an operator to look inside later with engine/archive.
//
// Data flows in two ways. A snapshot for the operator's own disk
// (`orchestrate checkpoint --output FILE`) is streamed from the engine on the
// container's host through that host's agent API, through the leader (which
// ordered it) and the agent the CLI talks to, to the CLI; the archive is
// never written on any agent's disk. A
// snapshot for the cluster's snapshot store (`--store`, or the evacuation
// policy hook through Snapshotter) is streamed by the container's host over
// the transfer layer (stream kind "snapshot") to the store host. Before it
// streams, the container's host records the pending upload in the
// replicated state (a raft lock "snapshot-upload/<id>" it holds, naming the
// store host); the store host accepts the stream only from the member that
// holds it (the sender bound to its SSH client key, transfer.Sender) and
// only into itself, and the commit only for a record that matches it
// (upload.go). The store host's agent
// writes <data_dir>/snapshots/<id>.tar.partial while hashing it, renames it
// once the transfer layer verified size and sha256, and then records it in
// the replicated state (cluster.PutSnapshot) with the stats the container's
// host measured. The store host's agent is the only writer of its files and
// their records: it prunes both together by retention
// (forensics.retention.count and .max_age; after every new snapshot and on a
// timer, Agent.Run), records first so that a record never names a missing
// file, and removes files it holds no record for once they are old enough
// that no record can still be in flight.
//
// A checkpoint image (`orchestrate checkpoint --image NAME`, image.go) is a
// snapshot wrapped as Podman's own `checkpoint --create-image` wraps one:
// the container's host spools the archive under <data_dir>/images, builds
// the OCI image (engine/archive) and loads it into its engine, pushing it
// to forensics.image_registry when one is set, or streams it back as an OCI
// archive. CheckpointImageArchive is the other end: it turns a checkpoint
// image on a host (pulled when missing) back into the archive stream an
// engine's Restore takes.
//
// Snapshots taken through the agent carry its host facts (CRIU and kernel
// versions, architecture) inside the archive (engine/archive.HostFactsFile),
// since neither CRIU's images nor Podman's archive record them.
//
// Failure behaviour: a leave-running snapshot never stops its container. A
// snapshot without leave-running stops it and keeps the checkpoint on its
// host; if the snapshot then fails anywhere, the container is resumed. A
// container with a migration in flight is refused (ErrConflict). Policies
// (the spot evacuation) take snapshots through Snapshotter.
//
// Who orders what. The operator routes that act on a host (a checkpoint in
// any form, removing a snapshot) are carried out by the leader: another
// agent forwards them (cluster.Forward) and relays the answer. The leader
// orders the host's step with its term key's signature (StepClient), and
// the host verifies it (cluster.LeaderStep): a member holding the cluster
// secret cannot freeze another host's container, read its memory or delete
// its snapshots by calling the host directly. The store host's commit is
// bound to the pending upload instead (the container's host calls it, not
// the leader); file and grep only read.
//
// Routes (registered on the cluster API, so they carry its auth):
//
//	POST /v1/checkpoint                 (on the leader) CheckpointRequest; answers the archive
//	                                    (Store false) or a SnapshotRecord (Store true),
//	                                    or with Image an ImageResult (or the OCI
//	                                    archive, ImageArchive)
//	GET  /v1/snapshots                  []cluster.SnapshotRecord, oldest first
//	GET  /v1/snapshots/{id}             one record
//	GET  /v1/snapshots/{id}/archive     the stored archive, from its store host
//	DELETE /v1/snapshots/{id}           (on the leader) remove a snapshot: record, then file
//	POST /v1/agent/forensics/checkpoint the container's host (leader's step): archive stream
//	POST /v1/agent/forensics/snapshot   the container's host (leader's step): checkpoint into the store
//	POST /v1/agent/forensics/commit     the store host (pending upload): record a received file, prune
//	GET  /v1/agent/forensics/file/{id}  the store host: a stored file
//	POST /v1/agent/forensics/remove     the store host (leader's step): remove one snapshot
//	POST /v1/snapshots/grep             GrepRequest; every store host searches its own
//	                                    snapshots (no archive moves); GrepResult
//	POST /v1/agent/forensics/grep       the store host: search the snapshots it holds
//	POST /v1/agent/forensics/image      the container's host (leader's step): ImageRequest; a checkpoint
//	                                    image loaded (and pushed), or streamed
//
// A streamed archive's outcome comes in HTTP trailers after the body:
// TrailerResult (a CheckpointResult as JSON) on success, TrailerError
// otherwise; a stream without either was cut and must be discarded.
package forensics
