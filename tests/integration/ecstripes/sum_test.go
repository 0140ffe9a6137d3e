package ecstripes

import "github.com/billyronks/couchestor/pkg/erasure"

func shardChecksum(b []byte) string { return erasure.ShardChecksum(b) }
