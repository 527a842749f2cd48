// Package archive reads container checkpoint archives offline, without an
// engine or CRIU, for forensic analysis (`orchestrate inspect ARCHIVE`):
// Podman's (podman container checkpoint --export), orchestrate's own Docker
// archives (engine/docker), and the archives CRI-O and containerd write for
// the kubelet's checkpoint API.
//
// It owns the knowledge of those layouts (the constants below) and of the
// CRIU image formats the analysis needs. Data flows one way: Read or Open
// streams the tar (uncompressed, zstd or gzip, detected by magic) exactly
// once, keeps the small metadata files and CRIU images in memory (within
// Config.MaxMemory, so that a decompression bomb is refused rather than
// obeyed), lists and hashes the rootfs changes without extracting them, and
// keeps the memory pages (pages-*.img, the bulk of a checkpoint) and the
// /dev/shm contents out of memory: it points into the original file when
// that is an uncompressed tar on disk, and otherwise copies them to a
// temporary directory that Close removes. Open then builds a Report
// (container metadata, environment, mounts, process tree with task states,
// mappings, files, sockets of every family with queue sizes, rootfs diff).
// Afterwards Search greps the dumped memory (private, shared and /dev/shm),
// DumpMemory writes one process's memory with a maps file, WriteCores writes
// ELF core files gdb loads, and Compare diffs two snapshots of a container
// down to the page.
//
// Every malformed, truncated or oversized input ends in an error that names
// the file involved and wraps ErrCorrupt or ErrTruncated; nothing in here
// panics on bad input (FuzzRead and FuzzImage check that).
package archive

// Format is the kind of archive, from its metadata files.
type Format string

const (
	FormatPodman     Format = "podman"
	FormatDocker     Format = "docker" // orchestrate's engine/docker archive
	FormatCRIO       Format = "cri-o"
	FormatContainerd Format = "containerd"
)

// The layout of a Podman checkpoint archive (podman container checkpoint
// --export). Paths are relative to the archive root. CRI-O and containerd
// archives share config.dump (checkpointctl's reduced ContainerConfig),
// spec.dump, checkpoint/, rootfs-diff.tar and stats-dump.
const (
	ConfigDumpFile       = "config.dump"           // libpod container config (JSON)
	SpecDumpFile         = "spec.dump"             // OCI runtime spec (JSON)
	StatusDumpFile       = "status.dump"           // container state (newer Podman; CRI ContainerStatus for containerd)
	NetworkStatusFile    = "network.status"        // network setup results (JSON)
	CheckpointDirectory  = "checkpoint"            // CRIU images
	RootFsDiffTar        = "rootfs-diff.tar"       // files added or changed in the container's writable layer (gzip for containerd)
	DeletedFilesFile     = "deleted.files"         // files deleted from the image (JSON list)
	VolumesDirectory     = "volumes"               // one tar per named volume
	DevShmCheckpointTar  = "devshm-checkpoint.tar" // contents of /dev/shm
	StatsDumpFile        = "stats-dump"            // CRIU dump statistics (CRIU image)
	ContainerLogFile     = "ctr.log"               // container log, when exported
	DumpLogFile          = "dump.log"              // CRIU dump log, when kept
	ArtifactsDirectory   = "artifacts"             // OCI artifacts (newer Podman)
	DescriptorsFile      = "descriptors.json"      // checkpoint/descriptors.json: the container's stdio
	InventoryImage       = "inventory.img"         // checkpoint/inventory.img
	PstreeImage          = "pstree.img"            // checkpoint/pstree.img
	FilesImage           = "files.img"             // checkpoint/files.img
	LegacyRegFilesImage  = "reg-files.img"         // regular files before CRIU 3.15 merged them into files.img
	LegacyInetSocksImage = "inetsk.img"            // inet sockets before CRIU 3.15
	SkQueuesImage        = "sk-queues.img"         // checkpoint/sk-queues.img: queued data of unix and packet sockets
	PagesImagePrefix     = "pages-"                // checkpoint/pages-<pages_id>.img: raw page contents

	// CRI-O and containerd (kubelet checkpoint API).
	BindMountsFile       = "bind.mounts"   // CRI-O: the container's bind mounts (JSON)
	ContainerdStatusFile = "status"        // containerd: its internal container status (JSON)
	ContainerdLogFile    = "container.log" // containerd: the container's log

	// orchestrate's Docker archive (engine/docker): a manifest first, CRIU's
	// images, the overlay upper directory and named volumes as trees, and a
	// trailer last.
	DockerManifestFile    = "orchestrate-docker.json"
	DockerTrailerFile     = "orchestrate-docker.end"
	DockerRootfsDirectory = "rootfs"

	// HostFactsFile is what the agent that took a snapshot records about
	// its host (CRIU and kernel versions), added to the archive's tar.
	HostFactsFile = "orchestrate-host.json"
)

// Per-process image names in checkpoint/, formatted with a pid (or an id).
const (
	coreImageFmt        = "core-%d.img"
	mmImageFmt          = "mm-%d.img"
	pagemapImageFmt     = "pagemap-%d.img"
	pagesImageFmt       = "pages-%d.img"
	idsImageFmt         = "ids-%d.img"
	fdinfoImageFmt      = "fdinfo-%d.img"
	fsImageFmt          = "fs-%d.img"
	tcpStreamImageFmt   = "tcp-stream-%x.img" // by socket inode, in hex
	shmemPagemapPrefix  = "pagemap-shmem-"    // pagemap-shmem-<shmid>.img
	mountpointsPrefix   = "mountpoints-"      // mountpoints-<mnt ns id>.img
	tmpfsImagePrefix    = "tmpfs-dev-"        // tmpfs-dev-<mnt id>.tar.gz.img: a tmpfs's files
	tmpfsImageSuffix    = ".tar.gz.img"
	sysvShmImagePrefix  = "ipcns-shm-"
	sysvShmPagemapInfix = "sysv"
)
