package webhooks

import (
	"os"
	"strings"
	"testing"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	"sigs.k8s.io/yaml"
)

// The configurations installed for a webhook server outside the cluster must
// be the generated ones (config/webhook/manifests.yaml), clientConfig aside.
func TestLocalConfigurationsMatchManifests(t *testing.T) {
	raw, err := os.ReadFile("../config/webhook/manifests.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var genMut admissionregistrationv1.MutatingWebhookConfiguration
	var genVal admissionregistrationv1.ValidatingWebhookConfiguration
	for _, doc := range strings.Split(string(raw), "\n---\n") {
		switch {
		case strings.Contains(doc, "kind: MutatingWebhookConfiguration"):
			if err := yaml.UnmarshalStrict([]byte(doc), &genMut); err != nil {
				t.Fatal(err)
			}
		case strings.Contains(doc, "kind: ValidatingWebhookConfiguration"):
			if err := yaml.UnmarshalStrict([]byte(doc), &genVal); err != nil {
				t.Fatal(err)
			}
		}
	}
	opts := Options{}
	opts.applyDefaults()
	mut, val := localConfigurations(opts, "https://localhost:9443")
	norm := func(name string, cc admissionregistrationv1.WebhookClientConfig) string {
		if cc.Service != nil {
			return name + *cc.Service.Path
		}
		return name + strings.TrimPrefix(*cc.URL, "https://localhost:9443")
	}
	if len(mut.Webhooks) != len(genMut.Webhooks) || len(val.Webhooks) != len(genVal.Webhooks) {
		t.Fatalf("local has %d+%d webhooks, generated %d+%d", len(mut.Webhooks), len(val.Webhooks), len(genMut.Webhooks), len(genVal.Webhooks))
	}
	for _, g := range genMut.Webhooks {
		found := false
		key := norm(g.Name, g.ClientConfig)
		for _, l := range mut.Webhooks {
			if norm(l.Name, l.ClientConfig) == key {
				found = true
				l.ClientConfig, g.ClientConfig = admissionregistrationv1.WebhookClientConfig{}, admissionregistrationv1.WebhookClientConfig{}
				a, _ := yaml.Marshal(l)
				b, _ := yaml.Marshal(g)
				if string(a) != string(b) {
					t.Errorf("mutating webhook %s differs:\nlocal:\n%s\ngenerated:\n%s", g.Name, a, b)
				}
				break
			}
		}
		if !found {
			t.Errorf("generated mutating webhook %s has no local twin", g.Name)
		}
	}
	for _, g := range genVal.Webhooks {
		found := false
		key := norm(g.Name, g.ClientConfig)
		for _, l := range val.Webhooks {
			if norm(l.Name, l.ClientConfig) == key {
				found = true
				l.ClientConfig, g.ClientConfig = admissionregistrationv1.WebhookClientConfig{}, admissionregistrationv1.WebhookClientConfig{}
				a, _ := yaml.Marshal(l)
				b, _ := yaml.Marshal(g)
				if string(a) != string(b) {
					t.Errorf("validating webhook %s differs:\nlocal:\n%s\ngenerated:\n%s", g.Name, a, b)
				}
				break
			}
		}
		if !found {
			t.Errorf("generated validating webhook %s has no local twin", g.Name)
		}
	}
}
