// Package nbd is a Network Block Device server: it exports a Backend (a
// byte-addressed device of fixed size) to unmodified NBD clients such as
// qemu-img, qemu-io, nbdcopy, nbdinfo, fio's nbd engine and the Linux kernel's
// nbd-client. It owns the wire protocol only; what the bytes are and where
// they live is the Backend's business (pkg/ecvolume exports an erasure-coded
// volume through its journal, cache and stripes).
//
// # Protocol, as implemented
//
// Written from the NBD protocol document (NetworkBlockDevice/nbd doc/proto.md):
//
//   - Fixed newstyle negotiation only (no oldstyle). The server offers
//     NBD_FLAG_FIXED_NEWSTYLE and NBD_FLAG_NO_ZEROES; unknown client flags
//     close the connection, as the document requires. A client that did not
//     set NBD_FLAG_C_FIXED_NEWSTYLE may only send NBD_OPT_EXPORT_NAME.
//   - Options: NBD_OPT_EXPORT_NAME, NBD_OPT_GO, NBD_OPT_INFO (replying
//     NBD_INFO_EXPORT always, NBD_INFO_BLOCK_SIZE always, NBD_INFO_NAME and
//     NBD_INFO_DESCRIPTION on request), NBD_OPT_LIST, NBD_OPT_ABORT.
//     NBD_OPT_STRUCTURED_REPLY, NBD_OPT_STARTTLS, the meta-context options,
//     NBD_OPT_EXTENDED_HEADERS and any unknown option get NBD_REP_ERR_UNSUP
//     (a malformed known option gets NBD_REP_ERR_INVALID; an unknown export
//     name gets NBD_REP_ERR_UNKNOWN, or a hard disconnect for
//     NBD_OPT_EXPORT_NAME, which cannot carry an error). Only simple replies
//     are sent.
//   - Transmission flags: HAS_FLAGS, SEND_FLUSH, SEND_FUA, SEND_TRIM,
//     SEND_WRITE_ZEROES, CAN_MULTI_CONN (every Backend must make Flush cover
//     writes completed on any connection), READ_ONLY for read-only exports.
//   - Commands: READ, WRITE, FLUSH, TRIM, WRITE_ZEROES (NBD_CMD_FLAG_NO_HOLE
//     accepted), DISC. NBD_CMD_FLAG_FUA is honoured on every command by
//     calling Backend.Flush after the command and before its reply.
//   - Errors: EINVAL for unknown commands or flags, out-of-range reads and
//     trims and requests above the advertised maximum block size; ENOSPC for
//     writes and write-zeroes past the end (the document's SHOULD) and for
//     backend errors matching ErrNoSpace or ENOSPC/EDQUOT/EFBIG; EPERM for
//     writes to a read-only export; ENOMEM for backend ENOMEM; ESHUTDOWN once
//     the server is stopping; EIO for any other backend error.
//
// # Concurrency
//
// Requests on one connection are read in order and executed concurrently (up
// to Server.MaxInFlight per connection, each WRITE payload read fully before
// the next header); replies go out as requests finish, each reply written
// whole (header and data together) and carrying its request's handle, so the
// replies of different handles never interleave. A client must not rely on
// the order of overlapping in-flight requests (the document says so); FLUSH
// covers every write whose reply was sent before the FLUSH was received.
// NBD_CMD_DISC and server shutdown let in-flight requests finish and their
// replies go out before the connection closes.
package nbd
