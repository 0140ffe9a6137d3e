{{/*
Object names are fixed ("couchestor-…"), not derived from the release name:
the operator's defaults (webhooks.Default*: couchestor-webhook-service,
couchestor-webhook-server-cert, couchestor-mutating/validating-webhook-configuration)
name them, and the cluster-scoped objects must not collide between releases
anyway — install the chart once per cluster.
*/}}
{{- define "couchestor.labels" -}}
app.kubernetes.io/name: couchestor
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "couchestor.selectorLabels" -}}
app.kubernetes.io/name: couchestor
control-plane: controller-manager
{{- end -}}

{{- /* Release images are tagged v<appVersion> (hack/bundlegen/release.yaml, make image). */ -}}
{{- define "couchestor.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default (printf "v%s" .Chart.AppVersion)) -}}
{{- end -}}

{{- define "couchestor.monitoringAvailable" -}}
{{- if .Capabilities.APIVersions.Has "monitoring.coreos.com/v1/ServiceMonitor" -}}true{{- end -}}
{{- end -}}

{{/* The data-plane namespaces: the release's own, then dataPlaneNamespaces (comma-separated, no duplicates). */}}
{{- define "couchestor.dataPlaneNamespaces" -}}
{{- prepend (without (uniq .Values.dataPlaneNamespaces) .Release.Namespace) .Release.Namespace | join "," -}}
{{- end -}}

{{- /* CSI driver (csi.enabled): the name is pkg/csi.DriverName. */ -}}
{{- define "couchestor.csi.driverName" -}}ec.csi.storage.billyronks.io{{- end -}}

{{- /* Where the shard-server Leases, the volumes' writer Leases and the shard client Secret live. */ -}}
{{- define "couchestor.csi.registryNamespace" -}}
{{- .Values.csi.registryNamespace | default .Release.Namespace -}}
{{- end -}}

{{- /* The shard client Secret: a DataPlane's <name>-shard-token unless csi.shardSecret names another. */ -}}
{{- define "couchestor.csi.shardSecret" -}}
{{- .Values.csi.shardSecret | default (printf "%s-shard-token" .Values.csi.dataPlane) -}}
{{- end -}}

{{- /* The node plugin's namespace: pod security "privileged", apart from the operator's (restricted). */ -}}
{{- define "couchestor.csi.nodeNamespace" -}}
{{- .Values.csi.node.namespace | default "couchestor-csi" -}}
{{- end -}}

{{- /* The plugin's socket directory on the node, as the kubelet sees it. */ -}}
{{- define "couchestor.csi.pluginDir" -}}
{{- printf "%s/plugins/%s" (trimSuffix "/" .Values.csi.kubeletDir) (include "couchestor.csi.driverName" .) -}}
{{- end -}}

{{- define "couchestor.csi.nodeImage" -}}
{{- .Values.csi.node.image | default (include "couchestor.image" .) -}}
{{- end -}}

{{- /* Flags both CSI services share. */ -}}
{{- define "couchestor.csi.commonArgs" -}}
- --endpoint=unix:///csi/csi.sock
- --registry-namespace={{ include "couchestor.csi.registryNamespace" . }}
- --mayastor-namespace={{ .Values.mayastorNamespace }}
- --shard-secret={{ include "couchestor.csi.registryNamespace" . }}/{{ include "couchestor.csi.shardSecret" . }}
{{- end -}}

{{- define "couchestor.csi.restricted" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
{{- end -}}
