//go:build tools

// Package csiresizer pins csi-resizer v1.14.0 (github.com/kubernetes-csi/external-resizer), which hack/cluster.sh
// builds and packs as the image the install chart names, for the CSI steps
// of tests/cluster. A module of its own so its dependencies stay out of
// every other module.
package csiresizer

import _ "github.com/kubernetes-csi/external-resizer/cmd/csi-resizer"
