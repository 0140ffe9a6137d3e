// Package e2e is CoucheStor's end-to-end suite: it runs the built operator
// binary as a process, as users do, against a local control plane (envtest's
// kube-apiserver and etcd, serving what a Mayastor 2.x cluster serves: DiskPool
// and no MayastorVolume kind), the Mayastor simulator as the REST double of
// Mayastor's control plane (tests/mayastorsim --api=rest; the operator runs
// with its default REST backend) and a real Prometheus, and checks the user-facing results
// with the project's kubectl. Everything lives in the tests; this file only
// documents the package.
package e2e
