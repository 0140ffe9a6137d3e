// Package packaging tests how CoucheStor ships: the Helm-plus-Go hybrid
// (DataPlane → couchestor-dataplane release in a real API server), the
// charts (lint, template, schema, server-side dry run), the kustomize tree,
// the OLM bundle (operator-framework validators and the scorecard checks) and
// the OCI image archive.
package packaging
