//go:build tools

// Package tools pins the Kubernetes node and control-plane binaries that
// hack/cluster.sh runs as a real single-node cluster (kubelet,
// kube-controller-manager, kube-scheduler, kube-proxy). A module of its own so
// the operator's go.mod never depends on k8s.io/kubernetes; the versions match
// hack/tools/controlplane (kube-apiserver, kubectl), so the Go build cache is
// shared between them.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
