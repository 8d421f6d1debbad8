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
