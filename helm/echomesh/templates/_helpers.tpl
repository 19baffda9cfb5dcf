{{- define "echomesh.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}{{ .Release.Name | trunc 40 | trimSuffix "-" }}{{- else -}}{{ printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" }}{{- end -}}
{{- end -}}

{{- define "echomesh.peers" -}}{{ include "echomesh.fullname" . }}-peers{{- end -}}

{{- define "echomesh.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "echomesh.labels" -}}
{{ include "echomesh.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Termination grace period: drain deadline + margin, or an explicit longer value. */}}
{{- define "echomesh.grace" -}}
{{- $derived := add .Values.drain.deadlineSeconds .Values.drain.graceMarginSeconds -}}
{{- with .Values.terminationGracePeriodSeconds -}}
{{- if le (int .) (int $.Values.drain.deadlineSeconds) -}}
{{- fail (printf "terminationGracePeriodSeconds (%d) must be longer than drain.deadlineSeconds (%d): the pod would be killed mid-drain" (int .) (int $.Values.drain.deadlineSeconds)) -}}
{{- end -}}
{{ . }}
{{- else -}}
{{ $derived }}
{{- end -}}
{{- end -}}
