package gen

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"sort"
	"strings"

	"github.com/blang/semver/v4"
	"github.com/operator-framework/api/pkg/lib/version"
	"github.com/operator-framework/api/pkg/operators/v1alpha1"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// OwnedGroup is the API group whose CRDs the operator owns.
const OwnedGroup = "storage.billyronks.io"

// managedResources are the kinds each owned kind makes the operator create or
// change (the CSV's owned[].resources: OLM's UI shows them as the object's
// children). Declared here because no marker carries it; a new kind without
// an entry fails generation.
var managedResources = map[string][]v1alpha1.APIResourceReference{
	"StoragePolicy": {
		{Kind: "MayastorVolume", Name: "mayastorvolumes", Version: "v1alpha1"},
		{Kind: "DiskPool", Name: "diskpools", Version: "v1beta2"},
		{Kind: "PersistentVolume", Name: "persistentvolumes", Version: "v1"},
	},
	"ErasureCodingPolicy": {
		{Kind: "ECStripe", Name: "ecstripes", Version: "v1"},
		{Kind: "ECPlacementGroup", Name: "ecplacementgroups", Version: "v1alpha1"},
	},
	"ECVolume": {
		{Kind: "ECStripe", Name: "ecstripes", Version: "v1"},
	},
	"ECStripe": {
		{Kind: "DiskPool", Name: "diskpools", Version: "v1beta2"},
	},
	"ECPlacementGroup": {
		{Kind: "DiskPool", Name: "diskpools", Version: "v1beta2"},
		{Kind: "Lease", Name: "leases", Version: "v1"},
	},
	"DataPlane": {
		{Kind: "StatefulSet", Name: "statefulsets", Version: "v1"},
		{Kind: "Service", Name: "services", Version: "v1"},
		{Kind: "Secret", Name: "secrets", Version: "v1"},
		{Kind: "ConfigMap", Name: "configmaps", Version: "v1"},
		{Kind: "StorageClass", Name: "storageclasses", Version: "v1"},
		{Kind: "ServiceMonitor", Name: "servicemonitors", Version: "v1"},
		{Kind: "PrometheusRule", Name: "prometheusrules", Version: "v1"},
	},
}

// icon is a small SVG: three stacked tiers, the bottom one striped.
const icon = `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 64 64"><rect x="8" y="8" width="48" height="12" rx="3" fill="#e4572e"/><rect x="8" y="26" width="48" height="12" rx="3" fill="#f3a712"/><rect x="8" y="44" width="48" height="12" rx="3" fill="#29335c"/><path d="M16 44v12M26 44v12M36 44v12M46 44v12" stroke="#a8c686" stroke-width="3"/></svg>`

const description = `CoucheStor gives OpenEBS Mayastor clusters automatic storage tiering and
erasure-coded cold storage.

* **StoragePolicy** watches the IOPS of the volumes it selects (from
  Prometheus), classifies each volume hot, warm or cold by watermarks over a
  sampling window, and moves it to a pool of that tier — one replica at a
  time, with cooldown, concurrency limits, timeouts, dry run and history.
* **ErasureCodingPolicy** says how cold data is protected: k data + m parity
  shards (Reed-Solomon or LRC), stripe size, write journal, scrubbing.
* **ECVolume** and **ECStripe** record erasure-coded volumes and where each
  shard of each stripe lives.
* **DataPlane** deploys the shard servers (one per cold DiskPool), their
  Service, ServiceMonitor, PrometheusRule and a Grafana dashboard.

Admission webhooks enforce the data model's rules before any reconciler acts.
Requires OpenEBS Mayastor 2.x and, for tiering, a Prometheus that scrapes
Mayastor's io-engine.`

// bundleObjects sorts the built config/manifests objects by their role in
// the bundle.
type bundleObjects struct {
	crds                  []*apiextensionsv1.CustomResourceDefinition
	deployment            *appsv1.Deployment
	clusterRoles, roles   map[string]*unstructured.Unstructured
	clusterBound, nsBound []string // role names bound to the operator's service account
	serviceAccount        string
	webhooks              []*unstructured.Unstructured
	services              []*unstructured.Unstructured
	examples              []*unstructured.Unstructured
	extra                 []*unstructured.Unstructured // shipped as bundle manifests as they are
}

func classify(objs []*unstructured.Unstructured) (*bundleObjects, error) {
	b := &bundleObjects{clusterRoles: map[string]*unstructured.Unstructured{}, roles: map[string]*unstructured.Unstructured{}}
	var bindings []*unstructured.Unstructured
	for _, o := range objs {
		gvk := o.GroupVersionKind()
		switch {
		case gvk.Kind == "CustomResourceDefinition":
			crd := &apiextensionsv1.CustomResourceDefinition{}
			if err := runtime.DefaultUnstructuredConverter.FromUnstructured(o.Object, crd); err != nil {
				return nil, fmt.Errorf("CRD %s: %w", o.GetName(), err)
			}
			b.crds = append(b.crds, crd)
		case gvk.Kind == "Deployment":
			if b.deployment != nil {
				return nil, fmt.Errorf("config/manifests: more than one Deployment (%s, %s)", b.deployment.Name, o.GetName())
			}
			d := &appsv1.Deployment{}
			if err := runtime.DefaultUnstructuredConverter.FromUnstructured(o.Object, d); err != nil {
				return nil, fmt.Errorf("Deployment %s: %w", o.GetName(), err)
			}
			b.deployment = d
		case gvk.Kind == "ClusterRole":
			b.clusterRoles[o.GetName()] = o
		case gvk.Kind == "Role":
			b.roles[o.GetName()] = o
		case gvk.Kind == "ClusterRoleBinding" || gvk.Kind == "RoleBinding":
			bindings = append(bindings, o)
		case gvk.Kind == "ServiceAccount":
			b.serviceAccount = o.GetName()
		case gvk.Kind == "MutatingWebhookConfiguration" || gvk.Kind == "ValidatingWebhookConfiguration":
			b.webhooks = append(b.webhooks, o)
		case gvk.Kind == "Service":
			b.services = append(b.services, o)
		case gvk.Kind == "Namespace":
			// OLM installs into the namespace the user picks.
		case gvk.Group == OwnedGroup:
			b.examples = append(b.examples, o)
		default:
			b.extra = append(b.extra, o)
		}
	}
	if b.deployment == nil || b.serviceAccount == "" {
		return nil, fmt.Errorf("config/manifests must contain the manager Deployment and its ServiceAccount")
	}
	for _, bd := range bindings {
		subjects, _, _ := unstructured.NestedSlice(bd.Object, "subjects")
		bound := false
		for _, s := range subjects {
			if m, ok := s.(map[string]any); ok && m["kind"] == "ServiceAccount" && m["name"] == b.serviceAccount {
				bound = true
			}
		}
		if !bound {
			continue
		}
		ref, _, _ := unstructured.NestedString(bd.Object, "roleRef", "name")
		refKind, _, _ := unstructured.NestedString(bd.Object, "roleRef", "kind")
		if refKind == "ClusterRole" {
			b.clusterBound = append(b.clusterBound, ref)
		} else {
			b.nsBound = append(b.nsBound, ref)
		}
	}
	sort.Strings(b.clusterBound)
	sort.Strings(b.nsBound)
	sort.Slice(b.crds, func(i, j int) bool { return b.crds[i].Name < b.crds[j].Name })
	return b, nil
}

func rulesOf(o *unstructured.Unstructured) ([]rbacv1.PolicyRule, error) {
	var r rbacv1.ClusterRole
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(o.Object, &r); err != nil {
		return nil, fmt.Errorf("%s %s: %w", o.GetKind(), o.GetName(), err)
	}
	return r.Rules, nil
}

// Bundle returns the bundle's files (paths relative to bundle/), except the
// scorecard configuration.
func Bundle(rel Release, objs []*unstructured.Unstructured) (map[string][]byte, error) {
	b, err := classify(objs)
	if err != nil {
		return nil, err
	}
	files := map[string][]byte{}
	ver, err := semver.Parse(rel.Version)
	if err != nil {
		return nil, fmt.Errorf("release version %q: %w", rel.Version, err)
	}

	// Owned CRDs with descriptors.
	var owned []v1alpha1.CRDDescription
	scopes := map[string]apiextensionsv1.ResourceScope{}
	for _, crd := range b.crds {
		if crd.Spec.Group != OwnedGroup {
			return nil, fmt.Errorf("CRD %s: only %s CRDs belong in the bundle", crd.Name, OwnedGroup)
		}
		scopes[crd.Spec.Names.Kind] = crd.Spec.Scope
		res, ok := managedResources[crd.Spec.Names.Kind]
		if !ok {
			return nil, fmt.Errorf("CRD %s: add the kinds it manages to managedResources in hack/bundlegen/gen", crd.Name)
		}
		for _, v := range crd.Spec.Versions {
			if !v.Served {
				continue
			}
			d, err := crdDescription(crd, v, res)
			if err != nil {
				return nil, err
			}
			owned = append(owned, d)
		}
		// The CRD as the bundle ships it, without server-populated fields.
		u, err := runtime.DefaultUnstructuredConverter.ToUnstructured(crd)
		if err != nil {
			return nil, err
		}
		delete(u, "status")
		unstructured.RemoveNestedField(u, "metadata", "creationTimestamp")
		if files["manifests/"+crd.Spec.Group+"_"+crd.Spec.Names.Plural+".yaml"], err = marshal(u); err != nil {
			return nil, err
		}
	}

	// alm-examples: one or more per owned kind.
	examples := make([]map[string]any, 0, len(b.examples))
	seen := map[string]bool{}
	sort.Slice(b.examples, func(i, j int) bool {
		if b.examples[i].GetKind() != b.examples[j].GetKind() {
			return b.examples[i].GetKind() < b.examples[j].GetKind()
		}
		return b.examples[i].GetName() < b.examples[j].GetName()
	})
	for _, e := range b.examples {
		e = e.DeepCopy()
		scope, ok := scopes[e.GetKind()]
		if !ok {
			return nil, fmt.Errorf("sample %s %s: no owned CRD for its kind", e.GetKind(), e.GetName())
		}
		if scope == apiextensionsv1.ClusterScoped {
			e.SetNamespace("")
		}
		seen[e.GetKind()] = true
		examples = append(examples, e.Object)
	}
	for _, d := range owned {
		if !seen[d.Kind] {
			return nil, fmt.Errorf("owned kind %s has no sample in config/samples (alm-examples needs one per kind)", d.Kind)
		}
	}
	almExamples, err := json.MarshalIndent(examples, "", "  ")
	if err != nil {
		return nil, err
	}

	// The install strategy.
	dep := b.deployment.DeepCopy()
	for i := range dep.Spec.Template.Spec.Containers {
		dep.Spec.Template.Spec.Containers[i].Image = rel.Image
	}
	strategy := v1alpha1.StrategyDetailsDeployment{
		DeploymentSpecs: []v1alpha1.StrategyDeploymentSpec{{Name: dep.Name, Spec: dep.Spec, Label: dep.Labels}},
	}
	var clusterRules []rbacv1.PolicyRule
	for _, n := range b.clusterBound {
		cr, ok := b.clusterRoles[n]
		if !ok {
			return nil, fmt.Errorf("ClusterRoleBinding to missing ClusterRole %s", n)
		}
		r, err := rulesOf(cr)
		if err != nil {
			return nil, err
		}
		clusterRules = append(clusterRules, r...)
		delete(b.clusterRoles, n)
	}
	var nsRules []rbacv1.PolicyRule
	for _, n := range b.nsBound {
		ro, ok := b.roles[n]
		if !ok {
			return nil, fmt.Errorf("RoleBinding to missing Role %s", n)
		}
		r, err := rulesOf(ro)
		if err != nil {
			return nil, err
		}
		nsRules = append(nsRules, r...)
	}
	strategy.ClusterPermissions = []v1alpha1.StrategyDeploymentPermissions{{ServiceAccountName: b.serviceAccount, Rules: clusterRules}}
	strategy.Permissions = []v1alpha1.StrategyDeploymentPermissions{{ServiceAccountName: b.serviceAccount, Rules: nsRules}}
	// ClusterRoles nobody binds to the operator (metrics-reader) ship as they are.
	for _, cr := range b.clusterRoles {
		b.extra = append(b.extra, cr)
	}

	// Webhooks: OLM creates the Service and injects the CA.
	webhookTarget, err := webhookTargetPort(b.services)
	if err != nil {
		return nil, err
	}
	var hooks []v1alpha1.WebhookDescription
	for _, cfg := range b.webhooks {
		ds, err := webhookDescriptions(cfg, dep.Name, webhookTarget)
		if err != nil {
			return nil, err
		}
		hooks = append(hooks, ds...)
	}
	sort.Slice(hooks, func(i, j int) bool { return hooks[i].GenerateName < hooks[j].GenerateName })
	for _, s := range b.services {
		if isWebhookService(s) {
			continue
		}
		b.extra = append(b.extra, s)
	}
	for _, o := range b.extra {
		o = o.DeepCopy()
		o.SetNamespace("")
		name := fmt.Sprintf("manifests/%s_%s_%s.yaml", o.GetName(), strings.ReplaceAll(o.GroupVersionKind().GroupVersion().String(), "/", "_"), strings.ToLower(o.GetKind()))
		if files[name], err = marshal(o.Object); err != nil {
			return nil, err
		}
	}

	csv := v1alpha1.ClusterServiceVersion{
		TypeMeta: metav1.TypeMeta{APIVersion: v1alpha1.SchemeGroupVersion.String(), Kind: v1alpha1.ClusterServiceVersionKind},
		ObjectMeta: metav1.ObjectMeta{
			Name: PackageName + ".v" + rel.Version,
			Annotations: map[string]string{
				"alm-examples":   string(almExamples),
				"capabilities":   "Basic Install",
				"categories":     "Storage",
				"containerImage": rel.Image,
				"createdAt":      rel.CreatedAt,
				"description":    "Automatic storage tiering and erasure-coded cold storage for OpenEBS Mayastor.",
				"repository":     "https://github.com/billyronks/couchestor",
				"support":        "CoucheStor maintainers",
				"operatorframework.io/suggested-namespace": "couchestor-system",
				"operators.operatorframework.io/builder":   "couchestor-bundlegen",
			},
		},
		Spec: v1alpha1.ClusterServiceVersionSpec{
			DisplayName:    "CoucheStor",
			Description:    description,
			Version:        version.OperatorVersion{Version: ver},
			MinKubeVersion: rel.MinKubeVersion,
			Maturity:       "alpha",
			Keywords:       []string{"storage", "mayastor", "openebs", "tiering", "erasure-coding"},
			Maintainers:    []v1alpha1.Maintainer{{Name: "CoucheStor maintainers", Email: "couchestor@billyronks.io"}},
			Provider:       v1alpha1.AppLink{Name: "Billy Ronks", URL: "https://github.com/billyronks"},
			Links:          []v1alpha1.AppLink{{Name: "Source", URL: "https://github.com/billyronks/couchestor"}},
			Icon:           []v1alpha1.Icon{{Data: base64.StdEncoding.EncodeToString([]byte(icon)), MediaType: "image/svg+xml"}},
			InstallModes: []v1alpha1.InstallMode{
				{Type: v1alpha1.InstallModeTypeOwnNamespace, Supported: false},
				{Type: v1alpha1.InstallModeTypeSingleNamespace, Supported: false},
				{Type: v1alpha1.InstallModeTypeMultiNamespace, Supported: false},
				{Type: v1alpha1.InstallModeTypeAllNamespaces, Supported: true},
			},
			InstallStrategy: v1alpha1.NamedInstallStrategy{
				StrategyName: v1alpha1.InstallStrategyNameDeployment,
				StrategySpec: strategy,
			},
			CustomResourceDefinitions: v1alpha1.CustomResourceDefinitions{Owned: owned},
			WebhookDefinitions:        hooks,
			RelatedImages:             []v1alpha1.RelatedImage{{Name: "couchestor", Image: rel.Image}},
		},
	}
	u, err := runtime.DefaultUnstructuredConverter.ToUnstructured(&csv)
	if err != nil {
		return nil, err
	}
	delete(u, "status")
	unstructured.RemoveNestedField(u, "metadata", "creationTimestamp")
	unstructured.RemoveNestedField(u, "spec", "install", "spec", "deployments", "0", "spec", "template", "metadata", "creationTimestamp")
	if files["manifests/"+PackageName+".clusterserviceversion.yaml"], err = marshal(u); err != nil {
		return nil, err
	}

	labels := BundleAnnotations(rel)
	if files["metadata/annotations.yaml"], err = marshal(map[string]any{"annotations": labels}); err != nil {
		return nil, err
	}
	files["bundle.Dockerfile"] = bundleDockerfile(labels)
	return files, nil
}

// BundleAnnotations are metadata/annotations.yaml's entries, which
// bundle.Dockerfile repeats as labels.
func BundleAnnotations(rel Release) map[string]string {
	return map[string]string{
		"operators.operatorframework.io.bundle.mediatype.v1":       "registry+v1",
		"operators.operatorframework.io.bundle.manifests.v1":       "manifests/",
		"operators.operatorframework.io.bundle.metadata.v1":        "metadata/",
		"operators.operatorframework.io.bundle.package.v1":         PackageName,
		"operators.operatorframework.io.bundle.channels.v1":        rel.Channel,
		"operators.operatorframework.io.bundle.channel.default.v1": rel.Channel,
		"operators.operatorframework.io.test.mediatype.v1":         "scorecard+v1",
		"operators.operatorframework.io.test.config.v1":            "tests/scorecard/",
	}
}

func bundleDockerfile(labels map[string]string) []byte {
	keys := make([]string, 0, len(labels))
	for k := range labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var sb strings.Builder
	sb.WriteString("# Generated by hack/bundlegen (make bundle). Build from bundle/:\n#   docker build -f bundle.Dockerfile -t <registry>/couchestor-bundle:<version> bundle/\nFROM scratch\n\n")
	for _, k := range keys {
		fmt.Fprintf(&sb, "LABEL %s=%s\n", k, labels[k])
	}
	sb.WriteString("\nCOPY manifests /manifests/\nCOPY metadata /metadata/\nCOPY tests/scorecard /tests/scorecard/\n")
	return []byte(sb.String())
}

func crdDescription(crd *apiextensionsv1.CustomResourceDefinition, v apiextensionsv1.CustomResourceDefinitionVersion, res []v1alpha1.APIResourceReference) (v1alpha1.CRDDescription, error) {
	d := v1alpha1.CRDDescription{
		Name:        crd.Name,
		Version:     v.Name,
		Kind:        crd.Spec.Names.Kind,
		DisplayName: humanize(crd.Spec.Names.Kind),
		Resources:   res,
	}
	if v.Schema == nil || v.Schema.OpenAPIV3Schema == nil {
		return d, fmt.Errorf("CRD %s version %s has no schema", crd.Name, v.Name)
	}
	root := v.Schema.OpenAPIV3Schema
	d.Description = firstSentence(root.Description)
	if spec, ok := root.Properties["spec"]; ok {
		for _, name := range sortedKeys(spec.Properties) {
			p := spec.Properties[name]
			d.SpecDescriptors = append(d.SpecDescriptors, v1alpha1.SpecDescriptor{
				Path: name, DisplayName: humanize(name), Description: firstSentence(p.Description),
				XDescriptors: specXDescriptors(p),
			})
		}
	}
	if status, ok := root.Properties["status"]; ok {
		for _, name := range sortedKeys(status.Properties) {
			p := status.Properties[name]
			sd := v1alpha1.StatusDescriptor{Path: name, DisplayName: humanize(name), Description: firstSentence(p.Description)}
			switch {
			case name == "conditions":
				sd.XDescriptors = []string{"urn:alm:descriptor:io.kubernetes.conditions"}
			case name == "phase":
				sd.XDescriptors = []string{"urn:alm:descriptor:io.kubernetes.phase"}
			case p.Type == "integer" || p.Type == "number":
				sd.XDescriptors = []string{"urn:alm:descriptor:text"}
			}
			d.StatusDescriptors = append(d.StatusDescriptors, sd)
		}
	}
	return d, nil
}

func specXDescriptors(p apiextensionsv1.JSONSchemaProps) []string {
	switch p.Type {
	case "boolean":
		return []string{"urn:alm:descriptor:com.tectonic.ui:booleanSwitch"}
	case "integer", "number":
		return []string{"urn:alm:descriptor:com.tectonic.ui:number"}
	case "string":
		if len(p.Enum) > 0 {
			out := make([]string, 0, len(p.Enum))
			for _, e := range p.Enum {
				var s string
				if json.Unmarshal(e.Raw, &s) == nil {
					out = append(out, "urn:alm:descriptor:com.tectonic.ui:select:"+s)
				}
			}
			return out
		}
		return []string{"urn:alm:descriptor:com.tectonic.ui:text"}
	case "object":
		if p.Properties == nil {
			return nil
		}
		return []string{"urn:alm:descriptor:com.tectonic.ui:advanced"}
	}
	return nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func isWebhookService(s *unstructured.Unstructured) bool {
	return s.GetLabels()["app.kubernetes.io/component"] == "webhook"
}

func webhookTargetPort(services []*unstructured.Unstructured) (intstr.IntOrString, error) {
	for _, s := range services {
		if !isWebhookService(s) {
			continue
		}
		var svc corev1.Service
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(s.Object, &svc); err != nil {
			return intstr.IntOrString{}, err
		}
		if len(svc.Spec.Ports) == 1 {
			return svc.Spec.Ports[0].TargetPort, nil
		}
	}
	return intstr.IntOrString{}, fmt.Errorf("config/manifests: no webhook Service (label app.kubernetes.io/component=webhook) with one port")
}

func webhookDescriptions(cfg *unstructured.Unstructured, deployment string, target intstr.IntOrString) ([]v1alpha1.WebhookDescription, error) {
	var out []v1alpha1.WebhookDescription
	conv := func(w admissionregistrationv1.WebhookClientConfig, name string, rules []admissionregistrationv1.RuleWithOperations, fp *admissionregistrationv1.FailurePolicyType, mp *admissionregistrationv1.MatchPolicyType, sel *metav1.LabelSelector, se *admissionregistrationv1.SideEffectClass, ts *int32, arv []string, typ v1alpha1.WebhookAdmissionType) (v1alpha1.WebhookDescription, error) {
		if w.Service == nil || w.Service.Path == nil {
			return v1alpha1.WebhookDescription{}, fmt.Errorf("webhook %s: clientConfig.service.path is required", name)
		}
		t := target
		return v1alpha1.WebhookDescription{
			GenerateName: name, Type: typ, DeploymentName: deployment, ContainerPort: 443, TargetPort: &t,
			Rules: rules, FailurePolicy: fp, MatchPolicy: mp, ObjectSelector: sel, SideEffects: se,
			TimeoutSeconds: ts, AdmissionReviewVersions: arv, WebhookPath: w.Service.Path,
		}, nil
	}
	switch cfg.GetKind() {
	case "MutatingWebhookConfiguration":
		var m admissionregistrationv1.MutatingWebhookConfiguration
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(cfg.Object, &m); err != nil {
			return nil, err
		}
		for _, w := range m.Webhooks {
			d, err := conv(w.ClientConfig, w.Name, w.Rules, w.FailurePolicy, w.MatchPolicy, w.ObjectSelector, w.SideEffects, w.TimeoutSeconds, w.AdmissionReviewVersions, v1alpha1.MutatingAdmissionWebhook)
			if err != nil {
				return nil, err
			}
			d.ReinvocationPolicy = w.ReinvocationPolicy
			out = append(out, d)
		}
	case "ValidatingWebhookConfiguration":
		var v admissionregistrationv1.ValidatingWebhookConfiguration
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(cfg.Object, &v); err != nil {
			return nil, err
		}
		for _, w := range v.Webhooks {
			d, err := conv(w.ClientConfig, w.Name, w.Rules, w.FailurePolicy, w.MatchPolicy, w.ObjectSelector, w.SideEffects, w.TimeoutSeconds, w.AdmissionReviewVersions, v1alpha1.ValidatingAdmissionWebhook)
			if err != nil {
				return nil, err
			}
			out = append(out, d)
		}
	}
	return out, nil
}
