//go:build tools

// Package csiprovisioner pins csi-provisioner v5.3.0 (github.com/kubernetes-csi/external-provisioner/v5), which hack/cluster.sh
// builds and packs as the image the install chart names, for the CSI steps
// of tests/cluster. A module of its own so its dependencies stay out of
// every other module.
package csiprovisioner

import _ "github.com/kubernetes-csi/external-provisioner/v5/cmd/csi-provisioner"
