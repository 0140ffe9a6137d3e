package packaging

import (
	"context"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	dataplanev1alpha1 "github.com/billyronks/couchestor/apis/dataplane/v1alpha1"
	"github.com/billyronks/couchestor/tests/testenv"
)

// TestDataPlaneSchema: the API server applies the CRD's defaults and rejects
// bad specs with a message naming the field.
func TestDataPlaneSchema(t *testing.T) {
	env := testenv.Start(t)
	ctx := context.Background()
	newNamespace(t, env.Client, "schema")
	base := func() *dataplanev1alpha1.DataPlane {
		return &dataplanev1alpha1.DataPlane{
			ObjectMeta: metav1.ObjectMeta{Namespace: "schema", GenerateName: "dp-"},
			Spec:       dataplanev1alpha1.DataPlaneSpec{ShardServers: []dataplanev1alpha1.ShardServer{{Node: "n1", DiskPool: "p1"}, {Node: "n2", DiskPool: "p2"}}},
		}
	}
	ok := base()
	if err := env.Client.Create(ctx, ok); err != nil {
		t.Fatalf("valid DataPlane rejected: %v", err)
	}
	var got dataplanev1alpha1.DataPlane
	if err := env.Client.Get(ctx, client.ObjectKeyFromObject(ok), &got); err != nil {
		t.Fatal(err)
	}
	s := got.Spec
	if s.Image == "" || s.Port == nil || *s.Port != 7443 || s.Storage.Type != dataplanev1alpha1.StorageMayastorVolume ||
		s.Storage.Size == nil || s.Storage.Size.String() != "100Gi" || s.Monitoring.ServiceMonitor == nil || !*s.Monitoring.ServiceMonitor ||
		s.Monitoring.MayastorNamespace != "mayastor" || s.Monitoring.IOEngineServiceSelector["app"] != "metrics-exporter-io-engine" {
		t.Errorf("defaults not applied: %+v", s)
	}

	cases := []struct {
		name string
		edit func(*dataplanev1alpha1.DataPlane)
		want string
	}{
		{"no servers", func(d *dataplanev1alpha1.DataPlane) { d.Spec.ShardServers = nil }, "spec.shardServers"},
		{"same node twice", func(d *dataplanev1alpha1.DataPlane) { d.Spec.ShardServers[1].Node = "n1" }, "Duplicate value"},
		{"same pool twice", func(d *dataplanev1alpha1.DataPlane) { d.Spec.ShardServers[1].DiskPool = "p1" }, "each diskPool may be served by one shard server only"},
		{"bad node name", func(d *dataplanev1alpha1.DataPlane) { d.Spec.ShardServers[0].Node = "Node_1" }, "spec.shardServers[0].node"},
		{"privileged port", func(d *dataplanev1alpha1.DataPlane) { d.Spec.Port = ptr.To[int32](443) }, "spec.port"},
		{"storage type", func(d *dataplanev1alpha1.DataPlane) { d.Spec.Storage.Type = "NFS" }, "spec.storage.type"},
		{"relative hostPath", func(d *dataplanev1alpha1.DataPlane) { d.Spec.Storage.HostPath = "data" }, "spec.storage.hostPath"},
		{"scrape interval", func(d *dataplanev1alpha1.DataPlane) { d.Spec.Monitoring.ScrapeInterval = "1 minute" }, "spec.monitoring.scrapeInterval"},
	}
	for _, c := range cases {
		d := base()
		c.edit(d)
		err := env.Client.Create(ctx, d)
		if err == nil {
			t.Errorf("%s: accepted", c.name)
			continue
		}
		if !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %q does not mention %q", c.name, err, c.want)
		}
	}
}
