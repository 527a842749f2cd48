// Package reboot owns what a host keeps on its own disk across a reboot:
// the local reboot's checkpoints, the host's reboot sequence record, and the
// kept checkpoints of restores that failed.
//
// Data flows through one directory, <node.data_dir>/reboot (root-only,
// 0700), that survives the reboot:
//
//	sequence.json            the host's reboot sequence (Sequence): why, which
//	                         mode, how far it got; the policy agent writes it
//	save/manifest.json       what a local reboot saved (Manifest), one Entry per
//	                         container, in orchestrate.priority order, with the
//	                         archive's size and sha256
//	save/<entry>.tar         checkpoint archives (<entry>.tar.partial while written)
//	save/images/<id>.tar     the containers' images, as the engine exports them
//	kept/<entry>/            a checkpoint whose restore failed: entry.json,
//	                         checkpoint.tar, image.tar; `orchestrate restore
//	                         ENTRY` retries it
//
// Before a local reboot, Store.Save checkpoints every movable container
// (not labelled orchestrate.migrate=false, running) into save/, highest
// priority first: it writes the archive to a partial file while hashing it,
// syncs it, records it in the manifest, and only then removes the
// container, so that nothing else (a restart policy, podman-restart) brings
// a fresh copy up after the boot. After the boot, Store.Restore brings every
// saved container back, highest priority first, with its memory and, on
// Podman, its established TCP connections. Each restore reads the archive
// through a reader that fails at its end unless size and sha256 match the
// manifest (the engine then creates nothing), and the restored container
// must have the manifest's identity and image. A restored container's
// archive is deleted; when none is left, save/ goes.
//
// Failure behaviour. Every step is recorded in the manifest before the next
// one starts, so an agent killed at any point carries on at its next start:
// a checkpoint cut short is thrown away and taken again (a container the
// engine had already stopped is resumed from the checkpoint it kept first);
// a restore cut short is finished or redone (a copy the engine left
// stopped is removed first). A checkpoint that fails leaves its container
// running and fails Save, and the caller restores what was saved (the
// reboot is called off). A restore that fails is never dropped: the
// archive moves to kept/, the failure is reported to the caller (which
// records an event) and counted in orchestrate_local_restores_total, and
// the checkpoint stays there until Store.RetryKept brings it back.
package reboot
