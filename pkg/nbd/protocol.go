package nbd

// Wire constants of the NBD protocol (doc/proto.md of NetworkBlockDevice/nbd).
// Every number is sent big endian.
const (
	magicNBD       uint64 = 0x4e42444d41474943 // "NBDMAGIC"
	magicIHaveOpt  uint64 = 0x49484156454F5054 // "IHAVEOPT"
	magicOptReply  uint64 = 0x3e889045565a9
	magicRequest   uint32 = 0x25609513
	magicSimpleRep uint32 = 0x67446698

	// Handshake flags (server) and client flags.
	flagFixedNewstyle  uint16 = 1 << 0
	flagNoZeroes       uint16 = 1 << 1
	flagCFixedNewstyle uint32 = 1 << 0
	flagCNoZeroes      uint32 = 1 << 1

	// Options.
	OptExportName       uint32 = 1
	OptAbort            uint32 = 2
	OptList             uint32 = 3
	OptStartTLS         uint32 = 5
	OptInfo             uint32 = 6
	OptGo               uint32 = 7
	OptStructuredReply  uint32 = 8
	OptListMetaContext  uint32 = 9
	OptSetMetaContext   uint32 = 10
	OptExtendedHeaders  uint32 = 11
	repAck              uint32 = 1
	repServer           uint32 = 2
	repInfo             uint32 = 3
	repFlagError        uint32 = 1 << 31
	RepErrUnsup         uint32 = repFlagError | 1
	RepErrPolicy        uint32 = repFlagError | 2
	RepErrInvalid       uint32 = repFlagError | 3
	RepErrUnknown       uint32 = repFlagError | 6
	RepErrShutdown      uint32 = repFlagError | 7
	infoExport          uint16 = 0
	infoName            uint16 = 1
	infoDescription     uint16 = 2
	infoBlockSize       uint16 = 3
	maxOptionDataLength        = 64 << 10 // option payloads we read into memory; larger ones are skipped
	maxStringLength            = 4096     // the document's bound on names and messages

	// Transmission flags.
	FlagHasFlags        uint16 = 1 << 0
	FlagReadOnly        uint16 = 1 << 1
	FlagSendFlush       uint16 = 1 << 2
	FlagSendFUA         uint16 = 1 << 3
	FlagRotational      uint16 = 1 << 4
	FlagSendTrim        uint16 = 1 << 5
	FlagSendWriteZeroes uint16 = 1 << 6
	FlagCanMultiConn    uint16 = 1 << 8

	// Commands and command flags.
	CmdRead          uint16 = 0
	CmdWrite         uint16 = 1
	CmdDisc          uint16 = 2
	CmdFlush         uint16 = 3
	CmdTrim          uint16 = 4
	CmdCache         uint16 = 5
	CmdWriteZeroes   uint16 = 6
	CmdBlockStatus   uint16 = 7
	CmdFlagFUA       uint16 = 1 << 0
	CmdFlagNoHole    uint16 = 1 << 1
	requestHeaderLen        = 28
	simpleReplyLen          = 16

	// Error values of replies.
	EPERM     uint32 = 1
	EIO       uint32 = 5
	ENOMEM    uint32 = 12
	EINVAL    uint32 = 22
	ENOSPC    uint32 = 28
	EOVERFLOW uint32 = 75
	ESHUTDOWN uint32 = 108
)

// DefaultMaxPayload is the largest READ or WRITE served (and advertised as the
// maximum block size): 32 MiB, the size the document tells clients to assume
// when a server says nothing.
const DefaultMaxPayload = 32 << 20
