// Command bundlegen writes CoucheStor's OLM bundle (bundle/) and the install
// chart's generated files (helm-charts/couchestor/files/) from the code's
// generated manifests and the kustomize tree in config/. Run it through
// `make bundle`; `make verify-generated` fails when its output is stale.
//
//	go run ./hack/bundlegen [--root .] [--out .]
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/billyronks/couchestor/hack/bundlegen/gen"
)

func main() {
	root := flag.String("root", ".", "Repository root to read config/ and hack/bundlegen/release.yaml from.")
	out := flag.String("out", "", "Directory to write bundle/ and helm-charts/couchestor/files/ into (default: --root).")
	flag.Parse()
	if *out == "" {
		*out = *root
	}
	if err := gen.Generate(*root, *out); err != nil {
		fmt.Fprintf(os.Stderr, "bundlegen: %v\n", err)
		os.Exit(1)
	}
}
