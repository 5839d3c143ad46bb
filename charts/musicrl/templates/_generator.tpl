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
  - name: MUSICRL_CONTINUOUS_BATCHING
    value: {{ $gen.continuousBatching | quote }}
  - name: MUSICRL_SHUTDOWN_GRACE_S
    value: {{ $gen.shutdownGraceSeconds | quote }}
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
terminationGracePeriodSeconds: {{ add $gen.shutdownGraceSeconds 15 }}  # the server's drain, then its exit
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

{{/* The name the rollout controller's patches carry in managedFields (KServeTargetConfig.field_manager). */}}
{{- define "musicrl.rolloutFieldManager" -}}musicrl-rollout{{- end -}}

{{/* Where the InferenceService records the generator.storageUri of the release that rendered it. */}}
{{- define "musicrl.installedUriAnnotation" -}}musicrl.io/installed-storage-uri{{- end -}}

{{/*
The stable predictor's storageUri. Takes "root" and "live": the InferenceService as `lookup` returns it, {} on a
first install and wherever no cluster is asked (`helm template`, --dry-run=client).

The rollout controller promotes a canary by merge-patching the live object, so rendering generator.storageUri
again would take the promotion back. With generator.keepPromotedModel the live URI stays while the controller's
field manager owns the field (it wrote it last) and generator.storageUri is still the one the release installed
(the annotation above): a changed storageUri is a deliberate choice and wins. The controller writes no annotation
of its own at promotion because KServe copies the InferenceService's annotations into the predictor's pod
template: a new one would restart the promoted pods (cut a new revision in Serverless mode).
*/}}
{{- define "musicrl.generatorStorageUri" -}}
{{- $gen := .root.Values.generator -}}
{{- $uri := $gen.storageUri -}}
{{- $live := .live | default dict -}}
{{- if and $gen.keepPromotedModel $live -}}
{{- $installed := dig "metadata" "annotations" (include "musicrl.installedUriAnnotation" .root) "" $live -}}
{{- $liveUri := dig "spec" "predictor" "model" "storageUri" "" $live -}}
{{- if and $liveUri (eq $installed $gen.storageUri) -}}
{{- $manager := include "musicrl.rolloutFieldManager" .root -}}
{{- range $entry := dig "metadata" "managedFields" (list) $live -}}
{{- $model := dig "fieldsV1" "f:spec" "f:predictor" "f:model" (dict) $entry -}}
{{- if and (eq (get $entry "manager" | toString) $manager) (hasKey $model "f:storageUri") -}}
{{- $uri = $liveUri -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- $uri -}}
{{- end -}}
