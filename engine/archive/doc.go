// Package archive reads Podman checkpoint archives offline, without Podman or
// CRIU, for forensic analysis (`orchestrate inspect ARCHIVE`).
//
// It owns the knowledge of the archive layout (the constants below) and of the
// few CRIU image formats the analysis needs. Data flows one way: Read or Open
// streams the tar (uncompressed, zstd or gzip, detected by magic) exactly once,
// keeps the small metadata files and CRIU images in memory, lists the rootfs
// diff without extracting it, and keeps the memory pages (pages-*.img, the bulk
// of a checkpoint) out of memory: it points into the original file when that
// is an uncompressed tar on disk, and otherwise copies them to a temporary
// directory that Close removes. Open then builds a Report (container metadata,
// process tree, mappings, files, sockets, rootfs diff); Grep searches the
// dumped pages afterwards.
//
// Every malformed, truncated or oversized input ends in an error that names
// the file involved and wraps ErrCorrupt or ErrTruncated; nothing in here
// panics on bad input (FuzzRead and FuzzImage check that).
package archive

// The layout of a Podman checkpoint archive (podman container checkpoint
// --export). Paths are relative to the archive root.
const (
	ConfigDumpFile       = "config.dump"           // libpod container config (JSON)
	SpecDumpFile         = "spec.dump"             // OCI runtime spec (JSON)
	StatusDumpFile       = "status.dump"           // container state (newer Podman)
	NetworkStatusFile    = "network.status"        // network setup results (JSON)
	CheckpointDirectory  = "checkpoint"            // CRIU images
	RootFsDiffTar        = "rootfs-diff.tar"       // files added or changed in the container's writable layer
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
	PagesImagePrefix     = "pages-"                // checkpoint/pages-<pages_id>.img: raw page contents
)

// Per-process image names in checkpoint/, formatted with a pid (or an id).
const (
	coreImageFmt    = "core-%d.img"
	mmImageFmt      = "mm-%d.img"
	pagemapImageFmt = "pagemap-%d.img"
	pagesImageFmt   = "pages-%d.img"
	idsImageFmt     = "ids-%d.img"
	fdinfoImageFmt  = "fdinfo-%d.img"
	fsImageFmt      = "fs-%d.img"
)
