package v1alpha1

import (
	"fmt"
	"path"
	"slices"
	"strings"

	"k8s.io/apimachinery/pkg/util/validation/field"
)

// DefaultAllowedImagePrefix is the image the operator allows by default: its
// own repository (the shard server is `couchestor shard-server`).
const DefaultAllowedImagePrefix = "ghcr.io/billyronks/couchestor:"

// DefaultAllowedHostPathPrefix is the only host directory a HostPath
// DataPlane may use by default (the CRD's default hostPath lies below it).
const DefaultAllowedHostPathPrefix = "/var/lib/couchestor/"

// Policy is what the operator lets a DataPlane ask for. A DataPlane renders
// privileged objects with the operator's identity (pods that mount host
// directories, run an image of the user's choosing, land on tainted nodes),
// so these are operator settings, never the DataPlane author's. The webhook
// and the Helm value translator both judge a DataPlane by Validate: one rule,
// two places that enforce it.
type Policy struct {
	// Namespaces the operator has a Role in (the install chart's
	// dataPlaneNamespaces). A DataPlane anywhere else is refused.
	Namespaces []string
	// HostPathPrefixes: storage.hostPath (type HostPath) must lie at or below
	// one of these directories.
	HostPathPrefixes []string
	// Images: spec.image must equal an entry, or start with an entry that
	// ends in ':', '@' or '/' (a repository's tags, digests or a registry path).
	Images []string
	// TolerationKeys: each toleration's key must be one of these. A toleration
	// with an empty key (it tolerates every taint) is always refused.
	TolerationKeys []string
}

// DefaultPolicy allows the operator's own image, host directories below
// /var/lib/couchestor/, no tolerations, and the given namespaces.
func DefaultPolicy(namespaces ...string) Policy {
	return Policy{
		Namespaces:       namespaces,
		HostPathPrefixes: []string{DefaultAllowedHostPathPrefix},
		Images:           []string{DefaultAllowedImagePrefix},
	}
}

// Validate returns every way dp asks for more than p allows, each naming the
// field, the value and the operator flag that would allow it.
func (p Policy) Validate(dp *DataPlane) field.ErrorList {
	var errs field.ErrorList
	if !slices.Contains(p.Namespaces, dp.Namespace) {
		errs = append(errs, field.Forbidden(field.NewPath("metadata", "namespace"),
			fmt.Sprintf("%q is not a data-plane namespace of this operator (allowed: %s); the operator has no Role there: add it to the install chart's dataPlaneNamespaces (operator flag --dataplane-namespaces)",
				dp.Namespace, list(p.Namespaces))))
	}
	spec := field.NewPath("spec")
	if img := dp.Spec.Image; img != "" && !imageAllowed(img, p.Images) {
		errs = append(errs, field.Forbidden(spec.Child("image"),
			fmt.Sprintf("%q is not an allowed image (allowed: %s; operator flag --dataplane-allowed-images)", img, list(p.Images))))
	}
	if dp.Spec.Storage.Type == StorageHostPath {
		hp := dp.Spec.Storage.HostPath
		if hp == "" {
			hp = strings.TrimSuffix(DefaultAllowedHostPathPrefix, "/") + "/shards"
		}
		if !hostPathAllowed(hp, p.HostPathPrefixes) {
			errs = append(errs, field.Forbidden(spec.Child("storage", "hostPath"),
				fmt.Sprintf("%q is not below an allowed host directory (allowed: %s; operator flag --dataplane-allowed-host-path-prefixes)", hp, list(p.HostPathPrefixes))))
		}
	}
	for i, t := range dp.Spec.Tolerations {
		f := spec.Child("tolerations").Index(i).Child("key")
		switch {
		case t.Key == "":
			errs = append(errs, field.Forbidden(f, "an empty key tolerates every taint; name the taint's key"))
		case !slices.Contains(p.TolerationKeys, t.Key):
			errs = append(errs, field.Forbidden(f,
				fmt.Sprintf("%q is not an allowed toleration key (allowed: %s; operator flag --dataplane-allowed-toleration-keys)", t.Key, list(p.TolerationKeys))))
		}
	}
	return errs
}

func list(s []string) string {
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, ", ")
}

func imageAllowed(img string, allowed []string) bool {
	for _, a := range allowed {
		if img == a {
			return true
		}
		if strings.HasSuffix(a, ":") || strings.HasSuffix(a, "@") || strings.HasSuffix(a, "/") {
			rest, ok := strings.CutPrefix(img, a)
			// "repo:" must not admit "repo:tag/../other"-like tricks, nor a
			// registry path prefix admit another registry's host.
			if ok && rest != "" && !strings.Contains(rest, "..") && (!strings.HasSuffix(a, ":") || !strings.Contains(rest, "/")) {
				return true
			}
		}
	}
	return false
}

// hostPathAllowed: the cleaned path is a prefix directory or lies below one
// (at a path-segment boundary: /var/lib/couchestor-evil is not below
// /var/lib/couchestor).
func hostPathAllowed(p string, prefixes []string) bool {
	if !path.IsAbs(p) {
		return false
	}
	c := path.Clean(p)
	for _, pre := range prefixes {
		pc := path.Clean(pre)
		if pc == "/" {
			return true
		}
		if c == pc || strings.HasPrefix(c, pc+"/") {
			return true
		}
	}
	return false
}
