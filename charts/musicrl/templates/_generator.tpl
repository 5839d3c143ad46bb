{{/* The model container of a predictor; only storageUri differs between the stable policy and its canary. */}}
{{- define "musicrl.generatorModel" -}}
{{- $gen := .root.Values.generator -}}
modelFormat:
  name: musicgen
runtime: {{ .runtime }}
protocolVersion: v2
storageUri: {{ .storageUri | quote }}
resources:
  {{- toYaml .resources | nindent 2 }}
env:
  - name: MUSICRL_DEVICE
    value: {{ ternary "cuda" "cpu" $gen.gpu.enabled }}
  - name: MUSICRL_DTYPE
    value: {{ ternary $gen.gpu.dtype "float32" $gen.gpu.enabled }}
  - name: MUSICRL_MAX_BATCH_SIZE
    value: {{ $gen.maxBatchSize | quote }}
  - name: OMP_NUM_THREADS  # torch's intra-op threads: the pod's CPUs, not the node's
    value: {{ include "musicrl.torchThreads" (dict "torchThreads" $gen.torchThreads "resources" $gen.resources) | quote }}
securityContext:
  {{- include "musicrl.containerSecurityContext" .root | nindent 2 }}
volumeMounts:
  {{- include "musicrl.tmpMount" .root | nindent 2 }}
  - name: cache
    mountPath: /cache
{{- end -}}
{{- define "musicrl.generatorPod" -}}
{{- $gen := .Values.generator -}}
serviceAccountName: {{ include "musicrl.serviceAccountName" . }}
labels:
  {{- include "musicrl.labels" (dict "root" . "component" "generator") | nindent 2 }}
securityContext:
  {{- include "musicrl.podSecurityContext" . | nindent 2 }}
{{- $nodeSelector := ternary (merge (deepCopy $gen.nodeSelector) $gen.gpu.nodeSelector) $gen.nodeSelector $gen.gpu.enabled }}
{{- $tolerations := ternary (concat $gen.tolerations $gen.gpu.tolerations) $gen.tolerations $gen.gpu.enabled }}
{{- with $nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
volumes:
  {{- include "musicrl.tmpVolume" . | nindent 2 }}
  - name: cache
    emptyDir:
      sizeLimit: {{ $gen.cacheSizeLimit }}
{{- end -}}
