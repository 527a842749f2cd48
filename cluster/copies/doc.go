// Package copies owns `orchestrate restore`: starting one or more copies of
// a container from a stored checkpoint, each with a new name and identity
// and the same memory (the talk's "quick startup" and "start multiple
// copies"), and retrying a checkpoint a failed local restore kept.
//
// Who orders what. Any agent takes an operator's request (Service); the
// leader carries it out. Every step on a host (inspect, push, drop,
// stage-image, restore, push-image, load-image, and the kept-checkpoint
// retry in cluster/migrate) is signed by the leader with its term key
// (cluster.StepClient) and verified by the host against its replica
// (cluster.LeaderStep): a member holding the cluster secret, or a deposed
// leader, is refused before anything happens. Any member can upload a
// file into any host's spool over SFTP, so a target restores (or loads an
// image from) only the spooled file the leader's step names by size and
// sha256, through a reader that fails on anything else.
//
// Sources, resolved by the leader (Service):
//   - a checkpoint kept after a failed local restore (package reboot): it is
//     restored in place, as itself, on the host that keeps it;
//   - a snapshot in the cluster's snapshot store (package forensics): held
//     by its store host;
//   - an archive file the CLI uploads (orchestrate checkpoint --output): held
//     by the agent it was uploaded to, under node.data_dir/copies, until the
//     copies started; that agent hands the request to the leader naming it
//     (RestoreRequest.Archive);
//   - OCI checkpoint images: see resolve, where their source belongs.
//
// Data flow for copies. The holder inspects the archive (engine/archive):
// name, identity, image, memory size, sockets, network mode. The Service
// refuses, before anything starts, what would clash: a name already used
// on a target host or twice in the request, established TCP connections
// (a copy cannot take over another's connection), and, for a container on
// the host's network that listens, a second copy on one host or a copy
// next to the original (the same address and port). It places the copies
// (policy.Place, spreading them), sends the image where it is missing
// (push-image into the target's spool, then load-image there), and then
// has the holder push the archive into each target's transfer spool over
// SFTP: resumable after a cut link, verified by size and sha256 before it
// is renamed. Each target restores its copies from the spooled file
// through a reader that fails unless size and sha256 match again
// (engine.Restorer then creates nothing), with a new name, and a new IP and
// MAC on bridge networks, under its restore policy, and removes the file.
//
// Failure behaviour: a refusal starts nothing. A failure after copies
// started reports the copies that run and the error; a copy that does not
// run is removed by its engine (engine.Restorer's promise).
package copies
