{{/* Chart name, overridable. */}}
{{- define "gpubatch.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name of the release's objects: RELEASE-gpubatch-operator, or RELEASE if it already
contains the chart name; at most 63 characters (a DNS label, as Service names must be). */}}
{{- define "gpubatch.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Name of cluster-scoped objects (ClusterRoles, ClusterRoleBindings): the release namespace
is part of it, so two releases of the same name in different namespaces (each watching its own
namespaces) do not collide. */}}
{{- define "gpubatch.clusterName" -}}
{{- printf "%s-%s" .Release.Namespace (include "gpubatch.fullname" .) }}
{{- end }}

{{- define "gpubatch.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "gpubatch.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "gpubatch.selectorLabels" -}}
app.kubernetes.io/name: {{ include "gpubatch.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "gpubatch.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "gpubatch.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: gpubatch
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "gpubatch.image" -}}
{{- printf "%s:%s" .Values.operatorImage.repository (default .Chart.AppVersion .Values.operatorImage.tag) }}
{{- end }}

{{/* The Service warm worker pods reach the lease endpoint through (a DNS label: 63 at most). */}}
{{- define "gpubatch.leaseServiceName" -}}
{{- printf "%s-leases" (include "gpubatch.fullname" . | trunc 56 | trimSuffix "-") }}
{{- end }}

{{/* The Secret with the lease endpoint's certificate: the user's, or the chart's own. */}}
{{- define "gpubatch.leaseSecretName" -}}
{{- default (printf "%s-lease-tls" (include "gpubatch.fullname" . | trunc 52 | trimSuffix "-")) .Values.leases.existingSecret }}
{{- end }}

{{/* The URL warm pods are given (GPUBATCH_LEASE_URL). */}}
{{- define "gpubatch.leaseURL" -}}
{{- printf "https://%s.%s.svc:%d/v1/lease" (include "gpubatch.leaseServiceName" .) .Release.Namespace (int .Values.leases.port) }}
{{- end }}
