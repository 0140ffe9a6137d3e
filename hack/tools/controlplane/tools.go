//go:build tools

// Package controlplane pins the Kubernetes control-plane binaries used by
// envtest (kube-apiserver, kubectl). It is a separate module so that the
// project's own go.mod never depends on k8s.io/kubernetes.
package controlplane

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
