// Package transfer owns moving checkpoint archives and image tarballs between
// orchestrate agents: an SSH endpoint in each agent (Server) and a pooled SSH
// client (Client). It knows nothing about containers; it moves bytes, verifies
// them, and hands them to whoever registered for them.
//
// Two paths carry data:
//
//   - Streams, for checkpoints. The source engine writes its archive into
//     Client.Stream; the client cuts it into chunks, hashes it (sha256 of the
//     uncompressed bytes), compresses chunks with zstd when that pays
//     (adaptive by default), and sends them as frames over one SSH channel of
//     type "orchestrate-stream". On the target, Server dispatches the stream by
//     its header's Kind to a registered Handler, whose reader yields the
//     decompressed bytes and, at the end, either io.EOF (size and sha256 match
//     the trailer) or an error wrapping ErrVerify (mismatch, cut, abort). A
//     consumer such as engine.Restorer therefore fails and creates nothing.
//     Nothing is written to disk on either side. The handler's result (or its
//     error text) goes back to the client and is returned by Stream.
//
//     Wire format, after the channel opens (all integers big-endian):
//
//     "ORCHSTR1" | u32 n | n bytes JSON StreamHeader
//     frames: u8 type | u32 n | n bytes payload
//     'R' raw chunk, 'Z' zstd-compressed chunk (one zstd frame),
//     'A' abort (payload: reason), 'T' trailer (u64 size | 32-byte sha256)
//     reply (server to client): u8 'K' or 'E' | u32 n | n bytes result or error
//
//   - Files, for large archives and image tarballs: SFTP (Client.Upload,
//     Client.Download) into the server's spool directory, which the server
//     confines with os.Root. Uploads go to NAME.partial, resume after a dropped
//     connection from the last verified offset, are verified by sha256 (by the
//     server's "sha256@orchestrate" request, or by reading the file back from a
//     stock sshd) and renamed to NAME only once verified. They work against
//     OpenSSH's sftp-server too.
//
// Security: the server accepts only client keys its Authorizer accepts; the
// client accepts only the host key its HostKeys returns for the peer. Both are
// interfaces so the cluster can keep them current.
package transfer
