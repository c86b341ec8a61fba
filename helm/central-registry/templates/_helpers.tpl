{{/*
Names, labels and the shared pieces of the pod specs. Every container of ours runs the
same image and picks its binary with `command`.
*/}}

{{- define "central-registry.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "central-registry.fullname" -}}
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

{{- define "central-registry.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object; pass a dict with "ctx" (the root) and "component". */}}
{{- define "central-registry.labels" -}}
helm.sh/chart: {{ include "central-registry.chart" .ctx }}
{{ include "central-registry.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: central-registry
{{- end }}

{{- define "central-registry.selectorLabels" -}}
app.kubernetes.io/name: {{ include "central-registry.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "central-registry.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The registry's URL inside the cluster (its Service). */}}
{{- define "central-registry.registryUrl" -}}
{{- printf "http://%s:%v" (include "central-registry.fullname" .) .Values.registry.service.port }}
{{- end }}

{{- define "central-registry.postgresName" -}}
{{- printf "%s-postgres" (include "central-registry.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "central-registry.authSecretName" -}}
{{- if .Values.auth.existingSecret }}
{{- .Values.auth.existingSecret }}
{{- else }}
{{- printf "%s-auth" (include "central-registry.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/* The Secret and key holding DATABASE_URL; fails when no database is configured. */}}
{{- define "central-registry.databaseSecretName" -}}
{{- if .Values.database.existingSecret }}
{{- .Values.database.existingSecret }}
{{- else if .Values.postgres.enabled }}
{{- include "central-registry.postgresName" . }}
{{- else }}
{{- fail "no database: set database.existingSecret (a Secret holding DATABASE_URL) or postgres.enabled=true" }}
{{- end }}
{{- end }}

{{- define "central-registry.databaseSecretKey" -}}
{{- if .Values.database.existingSecret }}
{{- .Values.database.existingSecretKey }}
{{- else }}
{{- print "database-url" }}
{{- end }}
{{- end }}

{{/*
Settings of the DNS interface the registry would refuse at start, refused at install
instead (a crash-looping Deployment says less than a failed `helm install`).
*/}}
{{- define "central-registry.checkDns" -}}
{{- if .Values.dns.enabled }}
{{- if has (int .Values.dns.port) (list (int .Values.registry.port) (int .Values.registry.service.port)) }}
{{- fail "dns.port must differ from registry.port and registry.service.port: DNS takes TCP on it too" }}
{{- end }}
{{- /* With auth.existingSecret the read token is unknown here; the registry checks at start. */}}
{{- if and .Values.auth.enabled (not .Values.auth.existingSecret) .Values.auth.readToken (not .Values.dns.allowUnauthenticated) }}
{{- fail "dns.enabled with auth.readToken: DNS has no tokens, so anyone reaching the DNS port could list every instance; set dns.allowUnauthenticated=true to serve it anyway" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Env of every binary that talks to the registry as a client (demo services, client). */}}
{{- define "central-registry.clientEnv" -}}
- name: REGISTRY_URL
  value: {{ include "central-registry.registryUrl" . | quote }}
{{- if .Values.auth.enabled }}
- name: REGISTRY_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "central-registry.authSecretName" . }}
      key: token
{{- end }}
{{- end }}

{{/* Logging and OpenTelemetry env, read by every binary (registry-client's telemetry). */}}
{{- define "central-registry.telemetryEnv" -}}
- name: LOG_FORMAT
  value: {{ .Values.logging.format | quote }}
- name: RUST_LOG
  value: {{ .Values.logging.level | quote }}
{{- with .Values.otel.endpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ . | quote }}
- name: OTEL_EXPORTER_OTLP_PROTOCOL
  value: {{ $.Values.otel.protocol | quote }}
{{- with $.Values.otel.sampler }}
- name: OTEL_TRACES_SAMPLER
  value: {{ . | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/* Pod-level security of our pods: distroless's non-root user, no service account token. */}}
{{- define "central-registry.podSecurity" -}}
automountServiceAccountToken: false
securityContext:
  runAsNonRoot: true
  runAsUser: 65532
  runAsGroup: 65532
  fsGroup: 65532
  seccompProfile:
    type: RuntimeDefault
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{- define "central-registry.containerSecurity" -}}
securityContext:
  allowPrivilegeEscalation: false
  readOnlyRootFilesystem: true
  capabilities:
    drop: ["ALL"]
{{- end }}

{{/* The demo client: the seed's flow against the registry (Job and helm test). */}}
{{- define "central-registry.demoClientContainer" -}}
- name: demo-client
  image: {{ include "central-registry.image" . | quote }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  command: ["demo-client"]
  # The seed's flow, not `make demo`'s resilience story: that one starts and kills local
  # processes, which a pod cannot do to the cluster; chapter 2 of it is this same flow.
  args: ["--scenario", "seed"]
  env:
    {{- include "central-registry.clientEnv" . | nindent 4 }}
    {{- include "central-registry.telemetryEnv" . | nindent 4 }}
    - name: OTEL_SERVICE_NAME
      value: demo-client
  resources:
    {{- toYaml .Values.demo.resources | nindent 4 }}
  {{- include "central-registry.containerSecurity" . | nindent 2 }}
{{- end }}
