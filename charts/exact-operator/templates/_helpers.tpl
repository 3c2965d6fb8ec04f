{{/*
Chart name, overridable with nameOverride.
*/}}
{{- define "exact-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name of every object: fullnameOverride, else the release name when it already contains
the chart name (release "exact-operator" gives "exact-operator"), else
"<release>-<chart name>". At most 63 characters (DNS label).
*/}}
{{- define "exact-operator.fullname" -}}
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

{{/*
"name-version" for the helm.sh/chart label.
*/}}
{{- define "exact-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Selector labels: stable for the life of a release (a Deployment's selector is immutable).
*/}}
{{- define "exact-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "exact-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Standard labels of every object.
*/}}
{{- define "exact-operator.labels" -}}
helm.sh/chart: {{ include "exact-operator.chart" . }}
{{ include "exact-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: exact-operator
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
Name of the ServiceAccount the operator runs as.
*/}}
{{- define "exact-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "exact-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Container image: repository@digest, else repository:tag (tag defaults to appVersion).
*/}}
{{- define "exact-operator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
Checks across values that the schema cannot express well; fails the render with a message.
*/}}
{{- define "exact-operator.validate" -}}
{{- if and .Values.oauth.enabled (not .Values.oauth.publicUrl) }}
{{- fail "oauth.enabled needs oauth.publicUrl: the public base URL that reaches the OAuth port (e.g. https://exact-oauth.example.com)" }}
{{- end }}
{{- if and .Values.oauth.ingress.enabled (not .Values.oauth.enabled) }}
{{- fail "oauth.ingress.enabled needs oauth.enabled: the Ingress routes to the OAuth port" }}
{{- end }}
{{- if and .Values.leaderElection.enabled (gt (int .Values.sharding.shards) 0) }}
{{- fail "leaderElection.enabled and sharding.shards are exclusive (leader election is the one-shard case with a standby): set sharding.shards: 0 to use leader election, or leaderElection.enabled: false to shard" }}
{{- end }}
{{- if eq (int .Values.metrics.port) (int .Values.oauth.port) }}
{{- fail "metrics.port and oauth.port must differ" }}
{{- end }}
{{- end }}
