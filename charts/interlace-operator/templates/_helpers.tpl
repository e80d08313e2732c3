{{/* Names, labels and images shared by every template. */}}

{{/* The chart's name, or nameOverride (the app.kubernetes.io/name label and the default fullname). */}}
{{- define "interlace-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "interlace-operator.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "interlace-operator.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "interlace-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "interlace-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "interlace-operator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "interlace-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: interlace
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "interlace-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "interlace-operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* repository[:tag][@digest]; the tag defaults to the chart's appVersion. */}}
{{- define "interlace-operator.imageRef" -}}
{{- $img := index . 0 -}}
{{- $root := index . 1 -}}
{{- if $img.digest -}}
{{- printf "%s@%s" $img.repository $img.digest -}}
{{- else -}}
{{- printf "%s:%s" $img.repository (default $root.Chart.AppVersion $img.tag) -}}
{{- end -}}
{{- end -}}

{{- define "interlace-operator.image" -}}
{{- include "interlace-operator.imageRef" (list .Values.image .) -}}
{{- end -}}

{{- define "interlace-operator.runtimeImage" -}}
{{- include "interlace-operator.imageRef" (list .Values.runtimeImage .) -}}
{{- end -}}

{{- define "interlace-operator.serviceMonitorEnabled" -}}
{{- $sm := .Values.metrics.serviceMonitor | default dict -}}
{{- $mode := $sm.enabled | default "auto" -}}
{{- if and .Values.metrics.enabled (kindIs "bool" $sm.enabled) -}}
{{- if $sm.enabled }}true{{ end -}}
{{- else if and .Values.metrics.enabled (eq (toString $mode) "auto") (.Capabilities.APIVersions.Has "monitoring.coreos.com/v1/ServiceMonitor") -}}
true
{{- end -}}
{{- end -}}
