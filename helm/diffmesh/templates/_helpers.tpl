{{- define "diffmesh.labels" -}}
app.kubernetes.io/name: diffmesh
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{/* A Deployment + Service for one stage: (dict "root" $ "name" "ar" "svc" .Values.ar "args" (list ...)) */}}
{{- define "diffmesh.service" -}}
{{- $root := .root -}}
{{- $name := .name -}}
{{- $svc := .svc -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ $root.Release.Name }}-{{ $name }}
  labels:
    {{- include "diffmesh.labels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ $name }}
spec:
  replicas: {{ $svc.replicas }}
  selector:
    matchLabels:
      app.kubernetes.io/instance: {{ $root.Release.Name }}
      app.kubernetes.io/component: {{ $name }}
  template:
    metadata:
      labels:
        {{- include "diffmesh.labels" $root | nindent 8 }}
        app.kubernetes.io/component: {{ $name }}
    spec:
      containers:
        - name: {{ $name }}
          image: "{{ $root.Values.image.repository }}:{{ $root.Values.image.tag }}"
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          command: ["/usr/local/bin/diffmesh-{{ $name }}"]
          args:
            - --port={{ $svc.port }}
            {{- range .args }}
            - {{ . }}
            {{- end }}
          ports:
            - name: grpc
              containerPort: {{ $svc.port }}
          # Native gRPC probes on grpc.health.v1.
          readinessProbe:
            grpc:
              port: {{ $svc.port }}
            periodSeconds: 5
          livenessProbe:
            grpc:
              port: {{ $svc.port }}
            initialDelaySeconds: 30
            periodSeconds: 10
          resources:
            {{- toYaml $svc.resources | nindent 12 }}
---
apiVersion: v1
kind: Service
metadata:
  name: {{ $root.Release.Name }}-{{ $name }}
  labels:
    {{- include "diffmesh.labels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ $name }}
spec:
  selector:
    app.kubernetes.io/instance: {{ $root.Release.Name }}
    app.kubernetes.io/component: {{ $name }}
  ports:
    - name: grpc
      port: {{ $svc.port }}
      targetPort: grpc
      appProtocol: grpc
{{- end -}}
