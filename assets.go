package main

import "embed"

// assets are the files the operator needs at run time, compiled in so the
// image needs nothing but the binary: the Helm watches and the charts they
// name (paths as in the repository).
//
//go:embed watches.yaml all:helm-charts/couchestor-dataplane
var assets embed.FS
