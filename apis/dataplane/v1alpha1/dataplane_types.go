package v1alpha1

import (
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// ShardServer is one shard server: the node it runs on and the cold DiskPool
// whose capacity it serves.
type ShardServer struct {
	// Node is the name of the Kubernetes node the shard server runs on.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$`
	Node string `json:"node"`
	// DiskPool is the name of the Mayastor DiskPool (on that node) the shard
	// server's single-replica volume is placed on. With storage.type
	// HostPath it only labels the server.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$`
	DiskPool string `json:"diskPool"`
}

// StorageType says where a shard server keeps its shards.
// +kubebuilder:validation:Enum=MayastorVolume;HostPath
type StorageType string

const (
	// StorageMayastorVolume: a single-replica Mayastor volume on the server's DiskPool.
	StorageMayastorVolume StorageType = "MayastorVolume"
	// StorageHostPath: a directory on the node (for nodes without Mayastor, and tests).
	StorageHostPath StorageType = "HostPath"
)

// ShardStorage is where shard servers keep shard bytes.
type ShardStorage struct {
	// Type is MayastorVolume (default) or HostPath.
	// +kubebuilder:default=MayastorVolume
	// +optional
	Type StorageType `json:"type,omitempty"`
	// Size of each shard server's volume (MayastorVolume only).
	// +kubebuilder:default="100Gi"
	// +optional
	Size *resource.Quantity `json:"size,omitempty"`
	// MayastorProtocol is the Mayastor volume's export protocol.
	// +kubebuilder:default=nvmf
	// +kubebuilder:validation:Enum=nvmf
	// +optional
	MayastorProtocol string `json:"mayastorProtocol,omitempty"`
	// HostPath is the data directory on the node (HostPath only); each
	// server writes below <hostPath>/<diskPool>.
	// +kubebuilder:default="/var/lib/couchestor/shards"
	// +kubebuilder:validation:Pattern=`^/.*`
	// +optional
	HostPath string `json:"hostPath,omitempty"`
}

// Monitoring selects the monitoring objects the chart renders. The
// ServiceMonitor and the PrometheusRule are rendered only when the cluster
// serves monitoring.coreos.com/v1 as well.
type Monitoring struct {
	// ServiceMonitor scraping Mayastor's io-engine volume counters (the
	// IOPS that tiering reads); the shard servers export no metrics yet.
	// +kubebuilder:default=true
	// +optional
	ServiceMonitor *bool `json:"serviceMonitor,omitempty"`
	// PrometheusRule with the IOPS recording rules and the alerts.
	// +kubebuilder:default=true
	// +optional
	PrometheusRule *bool `json:"prometheusRule,omitempty"`
	// GrafanaDashboard ConfigMap (labelled grafana_dashboard=1 for the sidecar).
	// +kubebuilder:default=true
	// +optional
	GrafanaDashboard *bool `json:"grafanaDashboard,omitempty"`
	// ScrapeInterval of the ServiceMonitor. Mayastor's docs advise minutes.
	// +kubebuilder:default="60s"
	// +kubebuilder:validation:Pattern=`^[0-9]+(ms|s|m|h)$`
	// +optional
	ScrapeInterval string `json:"scrapeInterval,omitempty"`
	// MayastorNamespace is where Mayastor's io-engine metrics Service runs.
	// +kubebuilder:default=mayastor
	// +kubebuilder:validation:MinLength=1
	// +optional
	MayastorNamespace string `json:"mayastorNamespace,omitempty"`
	// IOEngineServiceSelector selects the io-engine metrics Service (port
	// named "metrics", :9502).
	// +kubebuilder:default={"app":"metrics-exporter-io-engine"}
	// +optional
	IOEngineServiceSelector map[string]string `json:"ioEngineServiceSelector,omitempty"`
	// IOPSWindow is the rate() window of the IOPS recording rules.
	// +kubebuilder:default="5m"
	// +kubebuilder:validation:Pattern=`^[0-9]+(s|m|h)$`
	// +optional
	IOPSWindow string `json:"iopsWindow,omitempty"`
}

// DataPlaneSpec is the desired data plane of one namespace.
type DataPlaneSpec struct {
	// Image runs `couchestor shard-server`; the operator's own image.
	// +kubebuilder:default="ghcr.io/billyronks/couchestor:v0.1.0"
	// +kubebuilder:validation:MinLength=1
	// +optional
	Image string `json:"image,omitempty"`
	// ImagePullPolicy of the shard-server containers.
	// +kubebuilder:default=IfNotPresent
	// +kubebuilder:validation:Enum=Always;IfNotPresent;Never
	// +optional
	ImagePullPolicy corev1.PullPolicy `json:"imagePullPolicy,omitempty"`
	// ShardServers lists one shard server per cold pool, on distinct nodes.
	// +kubebuilder:validation:XValidation:rule="self.all(a, self.exists_one(b, b.diskPool == a.diskPool))",message="spec.shardServers: each diskPool may be served by one shard server only"
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=256
	// +listType=map
	// +listMapKey=node
	ShardServers []ShardServer `json:"shardServers"`
	// Port the shard servers listen on (HTTPS; they also answer /healthz there).
	// +kubebuilder:default=7443
	// +kubebuilder:validation:Minimum=1024
	// +kubebuilder:validation:Maximum=65535
	// +optional
	Port *int32 `json:"port,omitempty"`
	// Storage is where shard bytes live.
	// +optional
	Storage ShardStorage `json:"storage,omitempty"`
	// Resources of each shard-server container.
	// +optional
	Resources corev1.ResourceRequirements `json:"resources,omitempty"`
	// Tolerations let shard servers run on tainted storage nodes.
	// +kubebuilder:validation:MaxItems=32
	// +optional
	Tolerations []corev1.Toleration `json:"tolerations,omitempty"`
	// Monitoring objects to render.
	// +optional
	Monitoring Monitoring `json:"monitoring,omitempty"`
}

// HelmCondition is a condition of the DataPlane: types Initialized,
// Deployed, ReleaseFailed and Irreconcilable are written by the Helm
// reconciler; ShardServersUpToDate by the shard-server rollout (True once
// every shard-server pod runs its StatefulSet's revision; False with reason
// RollingUpdate or RolloutWaiting while it restarts them one at a time).
type HelmCondition struct {
	// Type of the condition.
	Type string `json:"type"`
	// Status is True, False or Unknown.
	Status corev1.ConditionStatus `json:"status"`
	// Reason in CamelCase, e.g. InstallSuccessful.
	// +optional
	Reason string `json:"reason,omitempty"`
	// Message for humans (the release notes on success, the error on failure).
	// +optional
	Message string `json:"message,omitempty"`
	// LastTransitionTime is when the status last changed.
	// +optional
	LastTransitionTime metav1.Time `json:"lastTransitionTime,omitempty"`
}

// DeployedRelease names the Helm release the reconciler deployed.
type DeployedRelease struct {
	// Name of the release (the DataPlane's name).
	// +optional
	Name string `json:"name,omitempty"`
	// Manifest is the rendered manifest of the deployed revision.
	// +optional
	Manifest string `json:"manifest,omitempty"`
}

// DataPlaneStatus is written by the Helm reconciler and, for condition
// ShardServersUpToDate only, by the shard-server rollout.
type DataPlaneStatus struct {
	// Conditions of the release.
	// +optional
	Conditions []HelmCondition `json:"conditions,omitempty"`
	// DeployedRelease is the release currently deployed.
	// +optional
	DeployedRelease *DeployedRelease `json:"deployedRelease,omitempty"`
}

// DataPlane deploys CoucheStor's shard servers, their Service and monitoring
// objects into its namespace through the couchestor-dataplane Helm chart.
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Namespaced,shortName=cdp,categories=couchestor
// +kubebuilder:printcolumn:name="Deployed",type=string,JSONPath=`.status.conditions[?(@.type=="Deployed")].status`
// +kubebuilder:printcolumn:name="Reason",type=string,JSONPath=`.status.conditions[?(@.type=="Deployed")].reason`
// +kubebuilder:printcolumn:name="ShardServers",type=string,JSONPath=`.status.conditions[?(@.type=="ShardServersUpToDate")].reason`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type DataPlane struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   DataPlaneSpec   `json:"spec"`
	Status DataPlaneStatus `json:"status,omitempty"`
}

// DataPlaneList is a list of DataPlanes.
// +kubebuilder:object:root=true
type DataPlaneList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []DataPlane `json:"items"`
}

func init() {
	SchemeBuilder.Register(&DataPlane{}, &DataPlaneList{})
}
