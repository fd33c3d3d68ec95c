{{/* Names are kept short enough for LeaderWorkerSet / StatefulSet pod names (63 characters). */}}
{{- define "diffmesh.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{- define "diffmesh.fullname" -}}
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

{{- define "diffmesh.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "diffmesh.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* (dict "root" $ "component" "ar") */}}
{{- define "diffmesh.selectorLabels" -}}
app.kubernetes.io/name: {{ include "diffmesh.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* In-cluster DNS name of one of the chart's Services: (dict "root" $ "name" "ar") */}}
{{- define "diffmesh.serviceHost" -}}
{{- printf "%s-%s.%s.svc.%s" (include "diffmesh.fullname" .root) .name .root.Release.Namespace .root.Values.clusterDomain -}}
{{- end -}}

{{/* Image of a service: its own `image` block over cudaImage (GPU services) over `image`.
     (dict "root" $ "svc" .Values.ar "gpu" true) */}}
{{- define "diffmesh.image" -}}
{{- $v := .root.Values -}}
{{- $img := deepCopy (.svc.image | default dict) -}}
{{- if .gpu -}}
{{- $img = merge $img (deepCopy $v.cudaImage) -}}
{{- end -}}
{{- $img = merge $img (deepCopy $v.image) -}}
{{- printf "%s:%s" (required "image.repository is required" $img.repository) (default .root.Chart.AppVersion $img.tag) -}}
{{- end -}}

{{/* A duration value (a whole number of ms, s or m, e.g. "500ms", "4s") in milliseconds, for
     checks across values; (dict "value" .Values.x "name" "x"). Fails naming the value otherwise. */}}
{{- define "diffmesh.durationMs" -}}
{{- $v := toString .value -}}
{{- if not (regexMatch "^[0-9]+(ms|s|m)$" $v) -}}
{{- fail (printf "%s must be a whole number of ms, s or m (e.g. 500ms, 4s), not %q" .name $v) -}}
{{- end -}}
{{- $n := int64 (regexFind "^[0-9]+" $v) -}}
{{- if hasSuffix "ms" $v -}}{{ $n }}{{- else if hasSuffix "s" $v -}}{{ mul $n 1000 }}{{- else -}}{{ mul $n 60000 }}{{- end -}}
{{- end -}}

{{/* --max-request-time=<svc.maxRequestTime>, checked: (dict "value" .Values.ar.maxRequestTime "name" "ar.maxRequestTime") */}}
{{- define "diffmesh.maxRequestTimeArg" -}}
{{- if lt (int64 (include "diffmesh.durationMs" .)) 1 -}}
{{- fail (printf "%s must be positive" .name) -}}
{{- end -}}
{{- printf "--max-request-time=%s" (toString .value) -}}
{{- end -}}

{{/* The stage services' model flag. */}}
{{- define "diffmesh.modelArg" -}}
{{- if .Values.modelDir -}}
{{- if not .Values.modelVolume -}}
{{- fail "modelDir needs modelVolume (the volume holding the snapshot, mounted at /models)" -}}
{{- end -}}
{{- printf "--model-dir=/models/%s" .Values.modelDir -}}
{{- else -}}
{{- printf "--model=%s" (required "model (or modelDir) is required" .Values.model) -}}
{{- end -}}
{{- end -}}

{{/* grpc.health.v1 probes: (dict "root" $ "svc" .Values.ar "service" "diffmesh.v1.ArTokenService")
     The orchestrator's service ("diffmesh.v1.GenerationService") serves only while every stage
     does: it gates readiness alone, and startup / liveness probe the process ("" service), so
     that a stage outage takes it out of its Service without restarting it. */}}
{{- define "diffmesh.grpcProbes" -}}
{{- $p := merge (deepCopy (.svc.probes | default dict)) (deepCopy .root.Values.probes) -}}
{{- range $kind := list "startup" "readiness" "liveness" }}
{{ $kind }}Probe:
  grpc:
    port: {{ $.svc.port }}
    service: {{ if and (has $.service (list "diffmesh.v1.GenerationService" "diffmesh.v1.DenoiseService")) (ne $kind "readiness") }}""{{ else }}{{ $.service }}{{ end }}
  {{- toYaml (index $p $kind) | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Container resources, with one GPU in the limits of a GPU pod: (dict "root" $ "svc" ... "gpu" bool) */}}
{{- define "diffmesh.resources" -}}
{{- $res := deepCopy (.svc.resources | default dict) -}}
{{- if .gpu -}}
{{- $limits := $res.limits | default dict -}}
{{- $_ := set $limits .root.Values.gpu.resource 1 -}}
{{- $_ := set $res "limits" $limits -}}
{{- end -}}
{{- toYaml $res -}}
{{- end -}}

{{/* The pod spec every service shares.
     (dict "root" $ "name" "ar" "svc" .Values.ar "gpu" bool "args" (list ...) "ports" (list (dict "name" "grpc" "port" 1)...)
           "health" "diffmesh.v1.ArTokenService" (or "" for no probes) "env" (list ...) "readinessExec" (list ...)
           "configMounts" (list (dict "name" "pipeline" "configMap" "x" "mountPath" "/etc/diffmesh"))) */}}
{{- define "diffmesh.podSpec" -}}
{{- $root := .root -}}
{{- $v := $root.Values -}}
{{- $svc := .svc -}}
automountServiceAccountToken: false
enableServiceLinks: false
{{- with $v.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml $v.podSecurityContext | nindent 2 }}
{{- with $svc.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $svc.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $svc.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
containers:
  - name: {{ .name }}
    image: {{ include "diffmesh.image" (dict "root" $root "svc" $svc "gpu" .gpu) | quote }}
    imagePullPolicy: {{ $v.image.pullPolicy }}
    command: ["/usr/local/bin/diffmesh-{{ default .name .binary }}"]
    args:
      {{- range .args }}
      - {{ . | quote }}
      {{- end }}
      {{- if $v.stageToken.enabled }}
      - "--stage-token-file=/etc/diffmesh-stage-token/{{ $v.stageToken.key }}"
      {{- end }}
      {{- range $svc.extraArgs }}
      - {{ tpl . $root | quote }}
      {{- end }}
    {{- $env := concat (.env | default list) ($svc.env | default list) }}
    {{- with $env }}
    env:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    ports:
      {{- range .ports }}
      - name: {{ .name }}
        containerPort: {{ .port }}
        protocol: TCP
      {{- end }}
    {{- if .health }}
    {{- include "diffmesh.grpcProbes" (dict "root" $root "svc" $svc "service" .health) | trim | nindent 4 }}
    {{- end }}
    {{- with .readinessExec }}
    readinessProbe:
      exec:
        command:
          {{- toYaml . | nindent 10 }}
      periodSeconds: {{ $v.probes.readiness.periodSeconds }}
      failureThreshold: {{ $v.probes.readiness.failureThreshold }}
      timeoutSeconds: {{ $v.probes.readiness.timeoutSeconds }}
    {{- end }}
    resources:
      {{- include "diffmesh.resources" (dict "root" $root "svc" $svc "gpu" .gpu) | nindent 6 }}
    securityContext:
      {{- toYaml $v.securityContext | nindent 6 }}
    volumeMounts:
      - name: tmp
        mountPath: /tmp
      {{- if .gpu }}
      - name: dshm
        mountPath: /dev/shm
      {{- end }}
      {{- if $v.modelVolume }}
      - name: models
        mountPath: /models
        readOnly: true
      {{- end }}
      {{- range .configMounts }}
      - name: {{ .name }}
        mountPath: {{ .mountPath }}
        readOnly: true
      {{- end }}
      {{- if $v.stageToken.enabled }}
      - name: stage-token
        mountPath: /etc/diffmesh-stage-token
        readOnly: true
      {{- end }}
volumes:
  - name: tmp
    emptyDir: {}
  {{- if .gpu }}
  - name: dshm
    emptyDir:
      medium: Memory
      sizeLimit: {{ $v.gpu.shmSizeLimit | quote }}
  {{- end }}
  {{- if $v.modelVolume }}
  - name: models
    {{- toYaml $v.modelVolume | nindent 4 }}
  {{- end }}
  {{- range .configMounts }}
  - name: {{ .name }}
    configMap:
      name: {{ .configMap }}
  {{- end }}
  {{- if $v.stageToken.enabled }}
  - name: stage-token
    secret:
      secretName: {{ include "diffmesh.stageTokenSecret" $root }}
      defaultMode: 0400
  {{- end }}
{{- end -}}

{{/* The Secret holding the stage token. */}}
{{- define "diffmesh.stageTokenSecret" -}}
{{- .Values.stageToken.existingSecret | default (printf "%s-stage-token" (include "diffmesh.fullname" .)) -}}
{{- end -}}

{{/* A Deployment + Service for one stage (orchestrator, ar, encoder, decode).
     (dict "root" $ "name" "ar" "svc" .Values.ar "gpu" bool "args" (list ...) "health" "..."
           "configMounts" (list ...) "podAnnotations" (dict ...) "binary" "denoise") — binary:
     the diffmesh-<binary> it runs, <name> when unset. */}}
{{- define "diffmesh.deployment" -}}
{{- $root := .root -}}
{{- $svc := .svc -}}
{{- $fullname := include "diffmesh.fullname" $root -}}
{{- $ports := list (dict "name" "grpc" "port" $svc.port) (dict "name" "metrics" "port" $svc.metricsPort) -}}
{{- $args := concat (list (printf "--port=%v" $svc.port) (printf "--metrics-port=%v" $svc.metricsPort)) .args -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ $fullname }}-{{ .name }}
  labels:
    {{- include "diffmesh.labels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ .name }}
spec:
  {{- if not (and $root.Values.autoscaling.enabled (eq $root.Values.autoscaling.target .name)) }}
  replicas: {{ $svc.replicas }}
  {{- end }}
  selector:
    matchLabels:
      {{- include "diffmesh.selectorLabels" (dict "root" $root "component" .name) | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "diffmesh.labels" $root | nindent 8 }}
        app.kubernetes.io/component: {{ .name }}
      {{- $annotations := merge (deepCopy ($svc.podAnnotations | default dict)) (.podAnnotations | default dict) }}
      {{- with $annotations }}
      annotations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
    spec:
      {{- include "diffmesh.podSpec" (dict "root" $root "name" .name "binary" .binary "svc" $svc "gpu" .gpu "args" $args "ports" $ports "health" .health "configMounts" .configMounts) | nindent 6 }}
---
apiVersion: v1
kind: Service
metadata:
  name: {{ $fullname }}-{{ .name }}
  labels:
    {{- include "diffmesh.labels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ .name }}
  {{- with ($svc.service | default dict).annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  type: {{ ($svc.service | default dict).type | default "ClusterIP" }}
  selector:
    {{- include "diffmesh.selectorLabels" (dict "root" $root "component" .name) | nindent 4 }}
  ports:
    - name: grpc
      port: {{ $svc.port }}
      targetPort: grpc
      protocol: TCP
      appProtocol: grpc
    - name: metrics
      port: {{ $svc.metricsPort }}
      targetPort: metrics
      protocol: TCP
      appProtocol: http
{{- end -}}

{{/* The workload the autoscaler scales: apiVersion, kind, name. */}}
{{- define "diffmesh.scaleTargetRef" -}}
{{- $t := .Values.autoscaling.target -}}
{{- if has $t (list "orchestrator" "ar" "encoder") -}}
{{- if not (index .Values $t).enabled -}}
{{- fail (printf "autoscaling.target %s: %s.enabled is false" $t $t) -}}
{{- end -}}
apiVersion: apps/v1
kind: Deployment
name: {{ include "diffmesh.fullname" . }}-{{ $t }}
{{- else if eq $t "denoise" -}}
{{- if not .Values.denoise.leaderWorkerSet.enabled -}}
{{- fail "autoscaling.target denoise needs denoise.leaderWorkerSet.enabled (a StatefulSet holds one group)" -}}
{{- end -}}
apiVersion: leaderworkerset.x-k8s.io/v1
kind: LeaderWorkerSet
name: {{ include "diffmesh.fullname" . }}-denoise-group
{{- else -}}
{{- fail (printf "autoscaling.target must be orchestrator, ar, encoder or denoise, not %q" $t) -}}
{{- end -}}
{{- end -}}

{{/* PromQL: the orchestrator's mean queue time over autoscaling.window (0 without requests). */}}
{{- define "diffmesh.queueSecondsQuery" -}}
{{- $sel := printf "namespace=%q,service=\"%s-orchestrator\"" .Release.Namespace (include "diffmesh.fullname" .) -}}
{{- $w := .Values.autoscaling.window -}}
{{- printf "sum(rate(diffmesh_queue_duration_seconds_sum{%s}[%s])) / clamp_min(sum(rate(diffmesh_queue_duration_seconds_count{%s}[%s])), 1e-9)" $sel $w $sel $w -}}
{{- end -}}
