{{/* Names, labels and the pieces every component's objects share. */}}

{{- define "chat.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "chat.fullname" -}}
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

{{/* The components: values key -> component name (label value and object name suffix). */}}
{{- define "chat.components" -}}
api: api
outboxRelay: outbox-relay
wsGateway: ws-gateway
{{- end }}

{{/* Object name of a component: dict "root" . "component" "api" */}}
{{- define "chat.componentName" -}}
{{- printf "%s-%s" (include "chat.fullname" .root) .component | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels: name + instance (+ component). Never anything that changes on upgrade. */}}
{{- define "chat.selectorLabels" -}}
app.kubernetes.io/name: {{ include "chat.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- if .component }}
app.kubernetes.io/component: {{ .component }}
{{- end }}
{{- end }}

{{/* Helm's recommended labels: dict "root" . "component" "api" (component may be ""). */}}
{{- define "chat.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "chat.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: chat-service
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "chat.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "chat.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* image reference of a component's values: dict "root" . "values" .Values.api */}}
{{- define "chat.image" -}}
{{- $tag := .values.image.tag | default .root.Values.image.tag | default .root.Chart.AppVersion }}
{{- if .values.image.digest }}
{{- printf "%s@%s" .values.image.repository .values.image.digest }}
{{- else }}
{{- printf "%s:%s" .values.image.repository $tag }}
{{- end }}
{{- end }}

{{/* imagePullPolicy: image.pullPolicy, else IfNotPresent for a digest and Always for a tag. */}}
{{- define "chat.pullPolicy" -}}
{{- .root.Values.image.pullPolicy | default (ternary "IfNotPresent" "Always" (not (empty .values.image.digest))) }}
{{- end }}

{{/* Secret names holding each credential (the chart's own or an existing one). */}}
{{- define "chat.secretName" -}}
{{- include "chat.fullname" . }}
{{- end }}
{{- define "chat.dbSecretName" -}}
{{- if .Values.postgresql.cluster.enabled }}{{ include "chat.pgOwnerSecret" . }}
{{- else }}{{ .Values.database.existingSecret | default (include "chat.secretName" .) }}{{ end }}
{{- end }}
{{- define "chat.dbSecretKey" -}}
{{- if .Values.postgresql.cluster.enabled }}DB_SOURCE{{ else }}{{ .Values.database.existingSecretKey }}{{ end }}
{{- end }}

{{/* The release's own CloudNativePG cluster (postgresql.cluster): its name, its Pooler's, and
       the Secrets holding its logins (basic-auth for the operator, plus the services' URLs). */}}
{{- define "chat.pgCluster" -}}
{{- printf "%s-pg" (include "chat.fullname" .) | trunc 60 | trimSuffix "-" }}
{{- end }}
{{- define "chat.pgPooler" -}}
{{- printf "%s-pooler" (include "chat.pgCluster" .) }}
{{- end }}
{{- define "chat.pgOwnerSecret" -}}
{{- printf "%s-owner" (include "chat.pgCluster" .) }}
{{- end }}
{{- define "chat.pgPooledSecret" -}}
{{- printf "%s-pooled" (include "chat.pgCluster" .) }}
{{- end }}

{{/* The read replica's URL (DB_READ_SOURCE) for the api: secret name and key; "" = none. */}}
{{- define "chat.readReplicaSecret" -}}
{{- $c := .Values.postgresql.cluster }}{{ $r := .Values.database.readReplica }}
{{- if $c.enabled }}{{ if $c.readReplica }}{{ include "chat.pgOwnerSecret" . }}{{ end }}
{{- else if $r.existingSecret }}{{ $r.existingSecret }}
{{- else if $r.url }}{{ include "chat.secretName" . }}{{ end }}
{{- end }}
{{- define "chat.readReplicaKey" -}}
{{- if .Values.postgresql.cluster.enabled }}DB_READ_SOURCE{{ else }}{{ .Values.database.readReplica.existingSecretKey }}{{ end }}
{{- end }}

{{/* The pooler's URL (DB_SOURCE of the api and ws-gateway, DB_TRANSACTION_POOLER=true):
       secret name and key; "" = no pooler. */}}
{{- define "chat.poolerSecret" -}}
{{- $c := .Values.postgresql.cluster }}{{ $p := .Values.database.pooler }}
{{- if $c.enabled }}{{ if $c.pooler.enabled }}{{ include "chat.pgPooledSecret" . }}{{ end }}
{{- else if $p.existingSecret }}{{ $p.existingSecret }}
{{- else if $p.url }}{{ include "chat.secretName" . }}{{ end }}
{{- end }}
{{- define "chat.poolerKey" -}}
{{- if .Values.postgresql.cluster.enabled }}DB_POOLED_SOURCE{{ else }}{{ .Values.database.pooler.existingSecretKey }}{{ end }}
{{- end }}
{{/* Does a component reach PostgreSQL through the pooler? dict "root" . "component" "api" */}}
{{- define "chat.pooled" -}}
{{- if and (include "chat.poolerSecret" .root) (ne .component "outbox-relay") }}true{{ end }}
{{- end }}
{{- define "chat.redisSecretName" -}}
{{- .Values.redis.existingSecret | default (include "chat.secretName" .) }}
{{- end }}
{{- define "chat.jwtSecretName" -}}
{{- .Values.jwt.existingSecret | default (include "chat.secretName" .) }}
{{- end }}
{{- define "chat.redisPasswordSet" -}}
{{- if or .Values.redis.existingSecret .Values.redis.password }}true{{ end }}
{{- end }}
{{- define "chat.jwtSecretUsed" -}}
{{- if or .Values.jwt.existingSecret (contains "HS" .Values.jwt.algorithms) }}true{{ end }}
{{- end }}

{{/* Does the chart render its own Secret (anything not taken from an existingSecret)? */}}
{{- define "chat.ownSecretNeeded" -}}
{{- $db := and (not .Values.postgresql.cluster.enabled) (not .Values.database.existingSecret) }}
{{- $replica := eq (include "chat.readReplicaSecret" .) (include "chat.secretName" .) }}
{{- $pooler := eq (include "chat.poolerSecret" .) (include "chat.secretName" .) }}
{{- if or $db $replica $pooler (and .Values.redis.password (not .Values.redis.existingSecret)) (and (include "chat.jwtSecretUsed" .) (not .Values.jwt.existingSecret)) }}true{{ end }}
{{- end }}

{{/* Credentials as files: the services read <NAME>_FILE, so no secret sits in the process
       environment (where /proc/<pid>/environ, crash dumps and `kubectl describe` can show it).
       The env entries, the projected volume and its mount, for a component's Deployment:
       dict "root" . "component" "api". The relay never verifies a token: no JWT secret. */}}
{{- define "chat.secretDir" -}}/var/run/secrets/chat{{- end }}
{{- define "chat.needsJwtSecret" -}}
{{- if and (include "chat.jwtSecretUsed" .root) (ne .component "outbox-relay") }}true{{ end }}
{{- end }}
{{- define "chat.secretFileEnv" -}}
- {name: DB_SOURCE_FILE, value: {{ printf "%s/db-source" (include "chat.secretDir" .) | quote }}}
{{- if include "chat.pooled" . }}
- {name: DB_TRANSACTION_POOLER, value: "true"}
{{- end }}
{{- if and (eq .component "api") (include "chat.readReplicaSecret" .root) }}
- {name: DB_READ_SOURCE_FILE, value: {{ printf "%s/db-read-source" (include "chat.secretDir" .) | quote }}}
{{- end }}
{{- if include "chat.redisPasswordSet" .root }}
- {name: REDIS_PASSWORD_FILE, value: {{ printf "%s/redis-password" (include "chat.secretDir" .) | quote }}}
{{- end }}
{{- if include "chat.needsJwtSecret" . }}
- {name: JWT_SECRET_FILE, value: {{ printf "%s/jwt-secret" (include "chat.secretDir" .) | quote }}}
{{- end }}
{{- end }}
{{- define "chat.secretVolume" -}}
{{- $v := .root.Values }}
- name: credentials
  projected:
    defaultMode: 0440
    sources:
      {{- if include "chat.pooled" . }}
      - secret:
          name: {{ include "chat.poolerSecret" .root }}
          items: [{key: {{ include "chat.poolerKey" .root }}, path: db-source}]
      {{- else }}
      - secret:
          name: {{ include "chat.dbSecretName" .root }}
          items: [{key: {{ include "chat.dbSecretKey" .root }}, path: db-source}]
      {{- end }}
      {{- if and (eq .component "api") (include "chat.readReplicaSecret" .root) }}
      - secret:
          name: {{ include "chat.readReplicaSecret" .root }}
          items: [{key: {{ include "chat.readReplicaKey" .root }}, path: db-read-source}]
      {{- end }}
      {{- if include "chat.redisPasswordSet" .root }}
      - secret:
          name: {{ include "chat.redisSecretName" .root }}
          items: [{key: {{ $v.redis.existingSecretKey }}, path: redis-password}]
      {{- end }}
      {{- if include "chat.needsJwtSecret" . }}
      - secret:
          name: {{ include "chat.jwtSecretName" .root }}
          items: [{key: {{ $v.jwt.existingSecretKey }}, path: jwt-secret}]
      {{- end }}
      {{- if and (eq .component "api") $v.objectStorage.endpoint $v.objectStorage.existingSecret }}
      - secret:
          name: {{ $v.objectStorage.existingSecret }}
          items: [{key: {{ $v.objectStorage.secretAccessKeyKey }}, path: s3-secret-access-key}]
      {{- end }}
{{- end }}
{{- define "chat.secretMount" -}}
- {name: credentials, mountPath: {{ include "chat.secretDir" . }}, readOnly: true}
{{- end }}

{{/* Default topology spread: zones then nodes, never blocking scheduling. */}}
{{- define "chat.topologySpread" -}}
{{- if .values.topologySpreadConstraints }}
{{- toYaml .values.topologySpreadConstraints }}
{{- else -}}
- maxSkew: 1
  topologyKey: topology.kubernetes.io/zone
  whenUnsatisfiable: ScheduleAnyway
  labelSelector:
    matchLabels:
      {{- include "chat.selectorLabels" . | nindent 6 }}
  matchLabelKeys: [pod-template-hash]
- maxSkew: 1
  topologyKey: kubernetes.io/hostname
  whenUnsatisfiable: ScheduleAnyway
  labelSelector:
    matchLabels:
      {{- include "chat.selectorLabels" . | nindent 6 }}
  matchLabelKeys: [pod-template-hash]
{{- end }}
{{- end }}

{{/* Who scales a component: "hpa", "operator" or "" (fixed replicaCount). */}}
{{- define "chat.scaler" -}}
{{- if and (eq .component "outbox-relay") .root.Values.operator.enabled }}operator
{{- else if .values.autoscaling.enabled }}hpa
{{- end }}
{{- end }}

{{/* A number that may have a fraction (a rate limit), written as the services parse it: whole
numbers without helm's float notation (1000000, not 1e+06), fractions as they are (0.5). */}}
{{- define "chat.rate" -}}
{{- if eq (float64 .) (floor .) -}}{{ . | int64 }}{{- else -}}{{ . }}{{- end -}}
{{- end }}
