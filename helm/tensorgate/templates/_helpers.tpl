{{/* Names, labels and computed settings shared by the templates. */}}

{{- define "tensorgate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tensorgate.fullname" -}}
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

{{- define "tensorgate.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tensorgate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tensorgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "tensorgate.labels" -}}
helm.sh/chart: {{ include "tensorgate.chart" . }}
{{ include "tensorgate.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: inference-server
app.kubernetes.io/part-of: tensorgate
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "tensorgate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tensorgate.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* repository:tag, or repository@digest. Argument: dict with repository, tag, digest, default. */}}
{{- define "tensorgate.imageRef" -}}
{{- if .digest }}
{{- printf "%s@%s" .repository .digest }}
{{- else }}
{{- printf "%s:%s" .repository (default .default .tag) }}
{{- end }}
{{- end }}

{{- define "tensorgate.image" -}}
{{- include "tensorgate.imageRef" (dict "repository" .Values.image.repository "tag" .Values.image.tag "digest" .Values.image.digest "default" .Chart.AppVersion) }}
{{- end }}

{{- define "tensorgate.modelClaimName" -}}
{{- default (printf "%s-models" (include "tensorgate.fullname" .)) .Values.modelRepository.pvc.existingClaim }}
{{- end }}

{{/* Seconds from SIGTERM's preStop to SIGKILL: longer than the preStop sleep plus the drain. */}}
{{- define "tensorgate.terminationGracePeriodSeconds" -}}
{{- $floor := add .Values.preStopSleepSeconds .Values.server.drainTimeoutSeconds }}
{{- if eq (int .Values.terminationGracePeriodSeconds) 0 }}
{{- add $floor 15 }}
{{- else if le (int .Values.terminationGracePeriodSeconds) (int $floor) }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must exceed preStopSleepSeconds + server.drainTimeoutSeconds (%d), or the server is killed while it drains" (int .Values.terminationGracePeriodSeconds) (int $floor)) }}
{{- else }}
{{- int .Values.terminationGracePeriodSeconds }}
{{- end }}
{{- end }}

{{/* TLS: the mounted files, and the probes' httpGet (the health port under mTLS, HTTPS under TLS). */}}
{{- define "tensorgate.tlsDir" -}}/etc/tensorgate/tls{{- end }}

{{- define "tensorgate.clientCAPath" -}}
{{- if .Values.tls.clientAuth.secretName }}
{{- printf "/etc/tensorgate/client-ca/%s" .Values.tls.clientAuth.key }}
{{- else }}
{{- printf "%s/%s" (include "tensorgate.tlsDir" .) .Values.tls.clientAuth.key }}
{{- end }}
{{- end }}

{{/* Argument: dict with root (the chart's context) and path. */}}
{{- define "tensorgate.probeGet" -}}
httpGet:
  path: {{ .path }}
  {{- if .root.Values.tls.clientAuth.enabled }}
  port: health
  {{- else }}
  port: http
  {{- if .root.Values.tls.enabled }}
  scheme: HTTPS
  {{- end }}
  {{- end }}
{{- end }}
