// Package e2e is CoucheStor's end-to-end suite: it runs the built operator
// binary as a process, as users do, against a local control plane (envtest's
// kube-apiserver and etcd), the Mayastor simulator (tests/mayastorsim, with its
// replica behaviour) and a real Prometheus, and checks the user-facing results
// with the project's kubectl. Everything lives in the tests; this file only
// documents the package.
package e2e
