//go:build tools

// Package crictl pins crictl (sigs.k8s.io/cri-tools), which hack/cluster.sh
// uses to remove the pod sandboxes the kubelet leaves behind. A module of its
// own so cri-tools' dependencies stay out of every other module.
package crictl

import _ "sigs.k8s.io/cri-tools/cmd/crictl"
