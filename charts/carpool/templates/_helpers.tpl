{{/* The chart name, overridable. */}}
{{- define "carpool.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The full name of the release's objects: release name, plus the chart name unless the
release name already holds it. */}}
{{- define "carpool.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "carpool.operator.fullname" -}}
{{- printf "%s-operator" (include "carpool.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels of every object of the release. */}}
{{- define "carpool.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "carpool.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: carpool
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of the operator's pods (immutable in the Deployment: never change). */}}
{{- define "carpool.operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "carpool.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "carpool.operator.labels" -}}
{{ include "carpool.labels" . }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "carpool.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "carpool.operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "carpool.peeringName" -}}
{{- default (include "carpool.fullname" .) .Values.operator.peering.name -}}
{{- end -}}

{{- define "carpool.image" -}}
{{- printf "%s:%s" .Values.operator.image.repository (default .Chart.AppVersion .Values.operator.image.tag) -}}
{{- end -}}

{{/* Fail when a Prometheus Operator kind is enabled on a cluster that does not serve it.
Call with (list $ "Kind" "values.path"). */}}
{{- define "carpool.requireMonitoringKind" -}}
{{- $root := index . 0 -}}
{{- $kind := index . 1 -}}
{{- if not ($root.Capabilities.APIVersions.Has (printf "monitoring.coreos.com/v1/%s" $kind)) -}}
{{- fail (printf "%s is enabled but this cluster does not serve monitoring.coreos.com/v1 %s (install the Prometheus Operator's CRDs first, or pass --api-versions monitoring.coreos.com/v1/%s to helm template)" (index . 2) $kind $kind) -}}
{{- end -}}
{{- end -}}

{{/* The runbook link of one alert, or nothing when no runbook base URL is set. */}}
{{- define "carpool.runbook" -}}
{{- $root := index . 0 -}}
{{- with $root.Values.prometheus.rules.runbookBaseUrl -}}
{{- printf "%s#%s" . (index $ 1 | lower) -}}
{{- end -}}
{{- end -}}

{{/* The kopf peering objects of the release, as Helm hooks: one ClusterKopfPeering, or one
KopfPeering per watched namespace that is not a glob. Call with (list $ "hook" "delete-policy"). */}}
{{- define "carpool.peerings" -}}
{{- $root := index . 0 -}}
{{- $hook := index . 1 -}}
{{- $policy := index . 2 -}}
{{- $namespaces := list "" -}}
{{- if $root.Values.operator.watchNamespaces -}}
{{- $namespaces = list -}}
{{- range $root.Values.operator.watchNamespaces -}}
{{- if not (regexMatch "[*?\\[!]" .) -}}
{{- $namespaces = append $namespaces . -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- range $namespaces }}
---
apiVersion: kopf.dev/v1
kind: {{ if . }}KopfPeering{{ else }}ClusterKopfPeering{{ end }}
metadata:
  name: {{ include "carpool.peeringName" $root }}
  {{- with . }}
  namespace: {{ . }}
  {{- end }}
  labels:
    {{- include "carpool.operator.labels" $root | nindent 4 }}
  annotations:
    helm.sh/hook: {{ $hook }}
    helm.sh/hook-weight: "-5"
    helm.sh/hook-delete-policy: {{ $policy }}
{{- end }}
{{- end -}}
