package testenv

import (
	"fmt"
	"path/filepath"

	"sigs.k8s.io/controller-runtime/pkg/envtest"
)

// MayastorV2CRDPaths are CoucheStor's own CRDs plus only what a Mayastor 2.x
// cluster serves: the DiskPool CRD of diskPoolVersion ("v1beta2" up to
// Mayastor 2.8, "v1beta3" since OpenEBS 4.3) and no MayastorVolume.
func MayastorV2CRDPaths(diskPoolVersion string) ([]string, error) {
	ext := filepath.Join(Root(), "config", "crd", "external")
	paths := []string{filepath.Join(Root(), "config", "crd", "bases")}
	switch diskPoolVersion {
	case "v1beta2":
		paths = append(paths, filepath.Join(ext, "openebs.io_diskpools.yaml"))
	case "v1beta3":
		paths = append(paths, filepath.Join(ext, "v1beta3", "openebs.io_diskpools.yaml"))
	default:
		return nil, fmt.Errorf("DiskPool version %q: must be v1beta2 or v1beta3", diskPoolVersion)
	}
	return paths, nil
}

// MayastorV2 is a Start option: the API server has the CRDs of
// MayastorV2CRDPaths(diskPoolVersion) instead of every CRD. It panics on an
// unknown version (a test's own mistake).
func MayastorV2(diskPoolVersion string) func(*envtest.Environment) {
	paths, err := MayastorV2CRDPaths(diskPoolVersion)
	if err != nil {
		panic(err)
	}
	return func(e *envtest.Environment) { e.CRDDirectoryPaths = paths }
}
