//go:build tools

// Package helm pins the real helm CLI (helm.sh/helm/v4's cmd/helm) that
// tests/cluster installs the charts with. A module of its own so Helm's
// dependencies stay out of the operator's go.mod.
package helm

import _ "helm.sh/helm/v4/cmd/helm"
