{{/* Name prefix of every object: the release (the DataPlane's name), at most 40 characters so suffixes fit. */}}
{{- define "dataplane.fullname" -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{- define "dataplane.labels" -}}
app.kubernetes.io/name: couchestor-dataplane
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: couchestor
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "dataplane.selectorLabels" -}}
app.kubernetes.io/name: couchestor-dataplane
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: shard-server
{{- end -}}

{{/* The per-server suffix: the node name, shortened with a hash when long. */}}
{{- define "dataplane.serverName" -}}
{{- $base := include "dataplane.fullname" .root -}}
{{- $node := .server.node -}}
{{- if gt (len $node) 20 -}}{{- $node = printf "%s-%s" ($node | trunc 11 | trimSuffix "-" | trimSuffix ".") (sha256sum $node | trunc 8) -}}{{- end -}}
{{- printf "%s-%s" $base ($node | replace "." "-") | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "dataplane.storageClassName" -}}
{{- printf "couchestor-%s-%s-%s" .root.Release.Namespace (include "dataplane.fullname" .root) .server.diskPool | trunc 253 -}}
{{- end -}}

{{- define "dataplane.monitoringAvailable" -}}
{{- if .Capabilities.APIVersions.Has "monitoring.coreos.com/v1" -}}true{{- end -}}
{{- end -}}
