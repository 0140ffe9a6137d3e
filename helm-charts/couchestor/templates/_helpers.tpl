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
