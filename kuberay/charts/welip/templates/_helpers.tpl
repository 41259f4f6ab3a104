{{/* The chart's name, or nameOverride. */}}
{{- define "welip.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The prefix of every resource name: the release name, plus the chart's name unless it holds it.
Short (40) so that KubeRay's derived names (<prefix>-raycluster-xxxxx-head-svc) stay under 63. */}}
{{- define "welip.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Labels every object carries. */}}
{{- define "welip.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "welip.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: welip
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The labels that select every pod of this release (NetworkPolicies). */}}
{{- define "welip.selectorLabels" -}}
app.kubernetes.io/name: {{ include "welip.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The RayService's name; KubeRay names its Serve Service <this>-serve-svc. */}}
{{- define "welip.serviceName" -}}
{{- include "welip.fullname" . -}}
{{- end -}}

{{- define "welip.serveService" -}}
{{- printf "%s-serve-svc" (include "welip.serviceName" .) -}}
{{- end -}}

{{- define "welip.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "welip.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "welip.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* Pod-level security: non-root uid 1000 (the image's `ray` user), RuntimeDefault seccomp. */}}
{{- define "welip.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 1000
runAsGroup: 1000
fsGroup: 1000
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "welip.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: 1000
allowPrivilegeEscalation: false
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* KubeRay's authOptions for a Ray cluster spec. */}}
{{- define "welip.authOptions" -}}
authOptions:
  mode: {{ .Values.rayAuth.mode }}
  {{- if and (eq .Values.rayAuth.mode "token") .Values.rayAuth.existingSecret }}
  secretName: {{ .Values.rayAuth.existingSecret }}
  {{- end }}
{{- end -}}

{{/* envFrom of a Ray container: the tracing ConfigMap (optional), then the named Secrets.
Args: dict "root" $ "secrets" (list of Secret names; empty ones are skipped). */}}
{{- define "welip.envFrom" -}}
{{- $root := .root -}}
{{- if $root.Values.observability.otel.enabled }}
# Tracing: the OTEL_* variables of the release's ConfigMap.
- configMapRef:
    name: {{ include "welip.fullname" $root }}-otel
    optional: true
{{- end }}
{{- range .secrets }}
{{- if . }}
- secretRef:
    name: {{ . }}
{{- end }}
{{- end }}
{{- end -}}

{{/* env of a Ray container: HOME, the release's `env`, and the caller's extra variables.
Args: dict "root" $ "extra" (map, may be empty). */}}
{{- define "welip.env" -}}
{{- $env := merge (dict) (default (dict) .extra) .root.Values.env -}}
- name: HOME
  value: /home/ray
{{- range $name, $value := $env }}
- name: {{ $name }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- include "welip.storeEnv" .root }}
{{- end -}}

{{/* Requests equal to limits (Guaranteed QoS), GPUs added. Args: the resources map, gpus. */}}
{{- define "welip.resources" -}}
{{- $res := deepCopy (default (dict) .resources) -}}
{{- if and .gpus (gt (int .gpus) 0) -}}
{{- $_ := set $res "nvidia.com/gpu" (int .gpus) -}}
{{- end -}}
requests:
  {{- toYaml $res | nindent 2 }}
limits:
  {{- toYaml $res | nindent 2 }}
{{- end -}}

{{/* One Ray pod template (head or worker).
Args: dict "root" $ "name" (container name) "group" (values of the group) "labels" (map)
"secrets" (list) "env" (map) "head" (bool) "spool" (bool: mount the audit spool). */}}
{{- define "welip.rayPodTemplate" -}}
{{- $root := .root -}}
{{- $group := .group -}}
{{- $gpus := int (default 0 $group.gpus) -}}
metadata:
  labels:
    {{- include "welip.labels" $root | nindent 4 }}
    {{- toYaml .labels | nindent 4 }}
spec:
  serviceAccountName: {{ include "welip.serviceAccountName" $root }}
  automountServiceAccountToken: false
  securityContext:
    {{- include "welip.podSecurityContext" $root | nindent 4 }}
  {{- with $root.Values.imagePullSecrets }}
  imagePullSecrets:
    {{- range . }}
    - name: {{ . }}
    {{- end }}
  {{- end }}
  containers:
    - name: {{ .name }}
      image: {{ include "welip.image" $root }}
      imagePullPolicy: {{ $root.Values.image.pullPolicy }}
      # The image's code: jobs/, configs/ and data/ paths are relative to it.
      workingDir: /app
      securityContext:
        {{- include "welip.containerSecurityContext" $root | nindent 8 }}
      env:
        {{- include "welip.env" (dict "root" $root "extra" .env) | nindent 8 }}
      envFrom:
        {{- include "welip.envFrom" (dict "root" $root "secrets" .secrets) | nindent 8 }}
      resources:
        {{- include "welip.resources" (dict "resources" $group.resources "gpus" $gpus) | nindent 8 }}
      {{- if .head }}
      ports:
        - containerPort: 6379
          name: gcs-server
        - containerPort: 8265
          name: dashboard
        - containerPort: 10001
          name: client
        {{- if .servePort }}
        - containerPort: {{ .servePort }}
          name: serve
        {{- end }}
      {{- end }}
      volumeMounts:
        # Ray's object store and vLLM/NCCL need more shared memory than a container's 64 MiB.
        - name: dshm
          mountPath: /dev/shm
        {{- if $group.modelCacheSize }}
        # Models copied from S3 (WELIP_MODEL_CACHE=/mnt/welip-models), once per pod.
        - name: model-cache
          mountPath: /mnt/welip-models
        {{- end }}
        {{- if .spool }}
        # The gateway's audit records wait here while PostgreSQL is unreachable.
        - name: audit-spool
          mountPath: {{ $root.Values.cluster.auditSpool.mountPath }}
        {{- end }}
        {{- include "welip.caVolumes" (dict "root" $root "part" "mounts") | nindent 8 }}
  volumes:
    - name: dshm
      emptyDir:
        medium: Memory
        sizeLimit: {{ default "1Gi" $group.shmSize }}
    {{- if $group.modelCacheSize }}
    - name: model-cache
      emptyDir:
        sizeLimit: {{ $group.modelCacheSize }}
    {{- end }}
    {{- if .spool }}
    - name: audit-spool
      {{- toYaml $root.Values.cluster.auditSpool.volume | nindent 6 }}
    {{- end }}
    {{- include "welip.caVolumes" (dict "root" $root "part" "volumes") | nindent 4 }}
  {{- with $group.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $group.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- if or $group.tolerations (gt $gpus 0) }}
  tolerations:
    {{- with $group.tolerations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
    {{- if gt $gpus 0 }}
    - key: nvidia.com/gpu
      operator: Exists
      effect: NoSchedule
    {{- end }}
  {{- end }}
{{- end -}}

{{/* One entrypoint argument, single-quoted for the shell unless it is plainly safe. */}}
{{- define "welip.shellArg" -}}
{{- if regexMatch "^[A-Za-z0-9_./:=,@+%-]+$" . -}}
{{- . -}}
{{- else -}}
{{- printf "'%s'" (replace "'" "'\"'\"'" .) -}}
{{- end -}}
{{- end -}}

{{/* A value as an override's right-hand side: numbers without Go's exponent notation. */}}
{{- define "welip.overrideValue" -}}
{{- if kindIs "float64" . -}}
{{- if eq (float64 (int64 .)) . -}}{{- int64 . -}}{{- else -}}{{- toJson . -}}{{- end -}}
{{- else if or (kindIs "map" .) (kindIs "slice" .) -}}
{{- toJson . -}}
{{- else -}}
{{- toString . -}}
{{- end -}}
{{- end -}}

{{/* The ports KubeRay's operator calls on a Ray cluster: dashboard (Serve config, job status),
GCS, dashboard agent (Serve health). */}}
{{- define "welip.operatorPorts" -}}
- protocol: TCP
  port: 8265
- protocol: TCP
  port: 6379
- protocol: TCP
  port: 52365
{{- end -}}

{{/* Prometheus to the Ray metrics port, when the PodMonitor is rendered. */}}
{{- define "welip.metricsIngress" -}}
{{- if .Values.observability.podMonitor.enabled -}}
- from:
    {{- toYaml .Values.networkPolicy.metricsFrom | nindent 4 }}
  ports:
    - protocol: TCP
      port: 8080
{{- end -}}
{{- end -}}

{{/* The chart's own data stores (stores.*): names, and the URLs WeLIP is given. */}}
{{- define "welip.postgresCluster" -}}
{{- printf "%s-postgres" (include "welip.fullname" .) -}}
{{- end -}}

{{- define "welip.redisName" -}}
{{- printf "%s-redis" (include "welip.fullname" .) -}}
{{- end -}}

{{- define "welip.minioName" -}}
{{- printf "%s-minio" (include "welip.fullname" .) -}}
{{- end -}}

{{/* redis+sentinel://<sentinel 0>:26379,<1>,<2>/<master name>: every sentinel by its pod's DNS name. */}}
{{- define "welip.redisSentinelUrl" -}}
{{- $name := include "welip.redisName" . -}}
{{- $hosts := list -}}
{{- range $i := until 3 -}}
{{- $hosts = append $hosts (printf "%s-%d.%s-headless.%s.svc.cluster.local:26379" $name $i $name $.Release.Namespace) -}}
{{- end -}}
{{- printf "redis+sentinel://:$(WELIP_REDIS_PASSWORD)@%s/%s" (join "," $hosts) .Values.stores.redis.masterName -}}
{{- end -}}

{{- define "welip.minioEndpoint" -}}
{{- $scheme := ternary "https" "http" (not (empty .Values.stores.minio.tls.existingSecret)) -}}
{{- printf "%s://%s.%s.svc.cluster.local:9000" $scheme (include "welip.minioName" .) .Release.Namespace -}}
{{- end -}}

{{/* Where CA certificates are mounted in Ray pods. */}}
{{- define "welip.caDir" -}}/etc/welip/tls{{- end -}}
{{- define "welip.postgresCADir" -}}/etc/welip/postgres-ca{{- end -}}

{{/* env entries pointing WeLIP at its stores, CAs and encryption keys (stores.*, tls, encryption).
Variables named here win over the same names in the Secrets loaded with envFrom. */}}
{{- define "welip.storeEnv" -}}
{{- $v := .Values -}}
{{- range $var, $on := dict "WELIP_DATABASE_URL" $v.stores.postgres.enabled "WELIP_REDIS_URL" $v.stores.redis.enabled "WELIP_S3_ENDPOINT_URL" $v.stores.minio.enabled }}
{{- if and $on (hasKey $v.env $var) }}
{{- fail (printf "env.%s: the chart sets it to its own store (stores.*); remove it from env" $var) }}
{{- end }}
{{- end }}
{{- if $v.stores.postgres.enabled }}
# CloudNativePG's app Secret: postgresql://<owner>:<password>@<cluster>-rw.<namespace>:5432/<db>
- name: WELIP_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "welip.postgresCluster" . }}-app
      key: uri
{{- end }}
{{- if $v.tls.databaseCAKey }}
- name: WELIP_DATABASE_CA_FILE
  value: {{ printf "%s/%s" (include "welip.caDir" .) $v.tls.databaseCAKey | quote }}
{{- else if $v.stores.postgres.enabled }}
# The CA CloudNativePG signs its server certificates with (Secret <cluster>-ca).
- name: WELIP_DATABASE_CA_FILE
  value: {{ printf "%s/ca.crt" (include "welip.postgresCADir" .) | quote }}
{{- end }}
{{- if $v.stores.redis.enabled }}
- name: WELIP_REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $v.stores.redis.existingSecret }}
      key: redis-password
- name: WELIP_REDIS_URL
  value: {{ include "welip.redisSentinelUrl" . | quote }}
{{- end }}
{{- if $v.tls.redisCAKey }}
- name: WELIP_REDIS_CA_FILE
  value: {{ printf "%s/%s" (include "welip.caDir" .) $v.tls.redisCAKey | quote }}
{{- end }}
{{- if $v.stores.minio.enabled }}
- name: WELIP_S3_ENDPOINT_URL
  value: {{ include "welip.minioEndpoint" . | quote }}
{{- end }}
{{- if $v.tls.s3CAKey }}
- name: WELIP_S3_CA_BUNDLE
  value: {{ printf "%s/%s" (include "welip.caDir" .) $v.tls.s3CAKey | quote }}
{{- end }}
{{- if $v.encryption.existingSecret }}
- name: WELIP_ENCRYPTION_KEYS
  valueFrom:
    secretKeyRef:
      name: {{ $v.encryption.existingSecret }}
      key: {{ $v.encryption.key }}
{{- end }}
{{- end -}}

{{/* volumeMounts and volumes for the CA Secrets of welip.storeEnv. Arg: dict "root" $ "part" ("mounts" or "volumes"). */}}
{{- define "welip.caVolumes" -}}
{{- $v := .root.Values -}}
{{- if eq .part "mounts" }}
{{- if $v.tls.caSecret }}
- name: welip-ca
  mountPath: {{ include "welip.caDir" .root }}
  readOnly: true
{{- end }}
{{- if and $v.stores.postgres.enabled (not $v.tls.databaseCAKey) }}
- name: postgres-ca
  mountPath: {{ include "welip.postgresCADir" .root }}
  readOnly: true
{{- end }}
{{- else }}
{{- if $v.tls.caSecret }}
- name: welip-ca
  secret:
    secretName: {{ $v.tls.caSecret }}
{{- end }}
{{- if and $v.stores.postgres.enabled (not $v.tls.databaseCAKey) }}
- name: postgres-ca
  secret:
    secretName: {{ include "welip.postgresCluster" .root }}-ca
    items:
      - key: ca.crt
        path: ca.crt
{{- end }}
{{- end }}
{{- end -}}
