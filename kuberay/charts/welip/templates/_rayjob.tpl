{{/* One per-run RayJob. Args: dict "root" $ "verb" (ingest, evaluate, finetune, align)
"overrides" (map of key=value overrides, chart-computed ones included). */}}
{{- define "welip.rayjob" -}}
{{- $root := .root -}}
{{- $verb := .verb -}}
{{- $job := index $root.Values.jobs $verb -}}
{{- if $job.enabled -}}
{{- if not $job.runId -}}
{{- fail (printf "jobs.%s.runId is required: each run is a new RayJob named <prefix>-%s-<runId>" $verb $verb) -}}
{{- end -}}
{{- $name := printf "%s-%s-%s" (include "welip.fullname" $root) $verb (toString $job.runId) | trunc 50 | trimSuffix "-" -}}
{{- $args := list "python" (printf "jobs/%s.py" $verb) "--config" $job.config -}}
{{- range $key, $value := .overrides -}}
{{- $args = append $args (printf "%s=%s" $key (include "welip.overrideValue" $value)) -}}
{{- end -}}
{{- $quoted := list -}}
{{- range $args -}}
{{- $quoted = append $quoted (include "welip.shellArg" .) -}}
{{- end -}}
{{- $labels := dict "app.kubernetes.io/component" $verb "welip.io/ray-cluster" $name "welip.io/workload" "job" -}}
{{- $secrets := list $root.Values.existingSecrets.storage $root.Values.existingSecrets.jobs -}}
{{- $head := deepCopy $job.head -}}
{{- $workers := deepCopy $job.workers -}}
apiVersion: ray.io/v1
kind: RayJob
metadata:
  name: {{ $name }}
  labels:
    {{- include "welip.labels" $root | nindent 4 }}
    {{- toYaml $labels | nindent 4 }}
spec:
  # Run with cwd /app in the image: the script, the config and the data are there.
  entrypoint: {{ join " " $quoted | quote }}
  # The job's Ray cluster exists for this run only.
  shutdownAfterJobFinishes: true
  ttlSecondsAfterFinished: {{ int $job.ttlSecondsAfterFinished }}
  activeDeadlineSeconds: {{ int $job.activeDeadlineSeconds }}
  backoffLimit: 0
  # `ray job submit` from a pod of the same image (KubeRay adds the command and the Ray token).
  submitterPodTemplate:
    metadata:
      labels:
        {{- include "welip.labels" $root | nindent 8 }}
        {{- toYaml $labels | nindent 8 }}
    spec:
      restartPolicy: Never
      serviceAccountName: {{ include "welip.serviceAccountName" $root }}
      automountServiceAccountToken: false
      securityContext:
        {{- include "welip.podSecurityContext" $root | nindent 8 }}
      {{- with $root.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- range . }}
        - name: {{ . }}
        {{- end }}
      {{- end }}
      containers:
        - name: ray-job-submitter
          image: {{ include "welip.image" $root }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          securityContext:
            {{- include "welip.containerSecurityContext" $root | nindent 12 }}
          env:
            - name: HOME
              value: /home/ray
          resources:
            requests: {cpu: 200m, memory: 512Mi}
            limits: {cpu: 500m, memory: 1Gi}
  rayClusterSpec:
    rayVersion: {{ $root.Values.rayVersion | quote }}
    {{- include "welip.authOptions" $root | nindent 4 }}
    headGroupSpec:
      rayStartParams:
        {{- if ne (toString (default "" $head.numCpus)) "" }}
        # The job's tasks and actors go to the workers; the head runs the driver.
        num-cpus: {{ $head.numCpus | toString | quote }}
        {{- end }}
        dashboard-host: 0.0.0.0
      template:
        {{- include "welip.rayPodTemplate" (dict "root" $root "name" "ray-head" "group" $head "labels" $labels "secrets" $secrets "env" (dict) "head" true) | nindent 8 }}
    {{- if gt (int $workers.replicas) 0 }}
    workerGroupSpecs:
      - groupName: {{ ternary "gpu" "cpu" (gt (int (default 0 $workers.gpus)) 0) }}
        replicas: {{ int $workers.replicas }}
        minReplicas: {{ int $workers.replicas }}
        maxReplicas: {{ int $workers.replicas }}
        rayStartParams: {}
        template:
          {{- include "welip.rayPodTemplate" (dict "root" $root "name" "ray-worker" "group" $workers "labels" $labels "secrets" $secrets "env" (dict)) | nindent 10 }}
    {{- end }}
{{- end -}}
{{- end -}}
