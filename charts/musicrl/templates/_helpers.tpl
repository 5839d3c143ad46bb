{{/*
Names, labels, images and the checks of invalid value combinations, computed once here.
*/}}

{{- define "musicrl.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Resource-name prefix: <release>-musicrl, or the release name when it already says musicrl. Kept to 32
characters: the generator InferenceService (<prefix>-generator) then leaves the rollout controller room for a canary
name of 10 characters in KServe's "{isvc}-{canary}-predictor", which must fit a 63-character DNS label. */}}
{{- define "musicrl.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 32 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "musicrl.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 32 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 32 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "musicrl.selectorLabels" -}}
app.kubernetes.io/name: {{ include "musicrl.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Labels of every object: call with (dict "root" $ "component" "gateway"). */}}
{{- define "musicrl.labels" -}}
{{ include "musicrl.selectorLabels" . }}
app.kubernetes.io/part-of: musicrl
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* A platform image: call with (dict "root" $ "target" "gateway"). */}}
{{- define "musicrl.image" -}}
{{- $image := .root.Values.image -}}
{{- if $image.digest -}}
{{- printf "%s/musicrl-%s@%s" $image.registry .target $image.digest -}}
{{- else -}}
{{- printf "%s/musicrl-%s:%s" $image.registry .target (default .root.Chart.AppVersion $image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "musicrl.natsImage" -}}
{{- $image := .Values.nats.bundled.image -}}
{{- if $image.digest -}}
{{- printf "%s/%s@%s" $image.registry $image.repository $image.digest -}}
{{- else -}}
{{- printf "%s/%s:%s" $image.registry $image.repository $image.tag -}}
{{- end -}}
{{- end -}}

{{- define "musicrl.serviceAccountName" -}}
{{- include "musicrl.fullname" . -}}
{{- end -}}

{{/* The account of the rollout controller and the pipeline's steps: the only one allowed to patch
InferenceServices. */}}
{{- define "musicrl.controllerServiceAccountName" -}}
{{- printf "%s-controller" (include "musicrl.fullname" .) -}}
{{- end -}}

{{- define "musicrl.natsName" -}}
{{- printf "%s-nats" (include "musicrl.fullname" .) -}}
{{- end -}}

{{- define "musicrl.generatorName" -}}
{{- printf "%s-generator" (include "musicrl.fullname" .) -}}
{{- end -}}

{{- define "musicrl.configMapName" -}}
{{- printf "%s-config" (include "musicrl.fullname" .) -}}
{{- end -}}

{{/* host:port of the stable generator's V2 REST endpoint: KServe's predictor Service listens on 80 in both modes. */}}
{{- define "musicrl.generatorUrl" -}}
{{- printf "%s-predictor.%s.%s:80" (include "musicrl.generatorName" .) .Release.Namespace .Values.kserve.clusterDomain -}}
{{- end -}}

{{/* The bundled NATS servers' client URL(s). */}}
{{- define "musicrl.bundledNatsUrl" -}}
{{- printf "nats://%s.%s.%s:4222" (include "musicrl.natsName" .) .Release.Namespace .Values.kserve.clusterDomain -}}
{{- end -}}

{{/* MUSICRL_NATS_URL of every NATS client: from the URL Secret, the external URL or the bundled Service. */}}
{{- define "musicrl.natsUrlEnv" -}}
{{- $external := .Values.nats.external -}}
- name: MUSICRL_NATS_URL
{{- if and (eq .Values.nats.mode "external") $external.urlSecret.name }}
  valueFrom:
    secretKeyRef:
      name: {{ $external.urlSecret.name }}
      key: {{ $external.urlSecret.key }}
{{- else if eq .Values.nats.mode "external" }}
  value: {{ $external.url | quote }}
{{- else }}
  value: {{ include "musicrl.bundledNatsUrl" . | quote }}
{{- end }}
{{- end -}}

{{/* The shared bus settings (the ConfigMap) plus the NATS URL: what every NATS client needs. */}}
{{- define "musicrl.busEnv" -}}
{{ include "musicrl.natsUrlEnv" . }}
{{- end -}}

{{- define "musicrl.busEnvFrom" -}}
- configMapRef:
    name: {{ include "musicrl.configMapName" . }}
{{- end -}}

{{- define "musicrl.objectStoreEnvFrom" -}}
{{- with .Values.secrets.objectStore.name -}}
- secretRef:
    name: {{ . }}
{{- end -}}
{{- end -}}

{{- define "musicrl.podSecurityContext" -}}
{{ toYaml .Values.podSecurityContext }}
{{- end -}}

{{- define "musicrl.containerSecurityContext" -}}
{{ toYaml .Values.containerSecurityContext }}
{{- end -}}

{{- define "musicrl.imagePullSecrets" -}}
{{- with .Values.image.pullSecrets -}}
imagePullSecrets:
{{ toYaml . }}
{{- end -}}
{{- end -}}

{{/* Whole CPUs of a Kubernetes CPU quantity ("500m" -> 1, "4" -> 4, 2.5 -> 3): the default torch thread count. */}}
{{- define "musicrl.wholeCpus" -}}
{{- $cpu := toString . -}}
{{- if hasSuffix "m" $cpu -}}
{{- $milli := trimSuffix "m" $cpu | int -}}
{{- max 1 (div (add $milli 999) 1000) -}}
{{- else -}}
{{- max 1 (ceil (float64 $cpu)) | int -}}
{{- end -}}
{{- end -}}

{{/* Threads torch uses in a model server: the setting, else the CPU limit, else the request, else 1. */}}
{{- define "musicrl.torchThreads" -}}
{{- $threads := int .torchThreads -}}
{{- if gt $threads 0 -}}
{{- $threads -}}
{{- else -}}
{{- $resources := .resources | default dict -}}
{{- $cpu := dig "limits" "cpu" (dig "requests" "cpu" "1" $resources) $resources -}}
{{- include "musicrl.wholeCpus" $cpu -}}
{{- end -}}
{{- end -}}

{{/* Refuse value combinations the schema cannot express, with a sentence that names the fix. */}}
{{- define "musicrl.validate" -}}
{{- $v := .Values -}}
{{- if and $v.generator.canary.enabled (not $v.generator.canary.storageUri) -}}
{{- fail "generator.canary.enabled is true but generator.canary.storageUri is empty: set the canary checkpoint's URI, or set generator.canary.enabled=false" -}}
{{- end -}}
{{- if and $v.generator.canary.enabled (eq $v.generator.canary.storageUri $v.generator.storageUri) -}}
{{- fail "generator.canary.storageUri is the stable generator.storageUri: a canary must serve another checkpoint" -}}
{{- end -}}
{{- if and $v.generator.canary.enabled (eq $v.kserve.mode "standard") (gt (int $v.generator.canary.replicas) (int $v.generator.minReplicas)) -}}
{{- fail (printf "generator.canary.replicas (%d) exceeds generator.minReplicas (%d), which KServe refuses: lower the canary's replicas or raise minReplicas" (int $v.generator.canary.replicas) (int $v.generator.minReplicas)) -}}
{{- end -}}
{{- if and (eq $v.nats.mode "bundled") (gt (int $v.nats.streamReplicas) (int $v.nats.bundled.replicas)) -}}
{{- fail (printf "nats.streamReplicas is %d but bundled NATS runs %d server(s): set nats.bundled.replicas to at least %d, or nats.streamReplicas=1" (int $v.nats.streamReplicas) (int $v.nats.bundled.replicas) (int $v.nats.streamReplicas)) -}}
{{- end -}}
{{- if and (eq $v.nats.mode "bundled") (eq (int $v.nats.bundled.replicas) 2) -}}
{{- fail "nats.bundled.replicas is 2: a JetStream cluster of 2 loses its quorum with either server; use 1, or 3 or more" -}}
{{- end -}}
{{- if and (eq $v.nats.mode "external") (not (or $v.nats.external.url $v.nats.external.urlSecret.name)) -}}
{{- fail "nats.mode is external but neither nats.external.url nor nats.external.urlSecret.name is set: name the NATS to use" -}}
{{- end -}}
{{- if and $v.gateway.ingress.enabled (not $v.gateway.ingress.host) -}}
{{- fail "gateway.ingress.enabled is true but gateway.ingress.host is empty: set the host name the page is served on, or set gateway.ingress.enabled=false" -}}
{{- end -}}
{{- if and $v.gateway.httpRoute.enabled (not $v.gateway.httpRoute.parentRefs) -}}
{{- fail "gateway.httpRoute.enabled is true but gateway.httpRoute.parentRefs is empty: name the Gateway the route attaches to" -}}
{{- end -}}
{{- if and (not $v.generator.runtime.create) (not $v.generator.runtime.name) -}}
{{- fail "generator.runtime.create is false but generator.runtime.name is empty: name the existing ServingRuntime to use" -}}
{{- end -}}
{{- if and $v.gateway.autoscaling.enabled (gt (int $v.gateway.autoscaling.minReplicas) (int $v.gateway.autoscaling.maxReplicas)) -}}
{{- fail "gateway.autoscaling.minReplicas exceeds maxReplicas: raise maxReplicas" -}}
{{- end -}}
{{- if lt (int $v.rollout.decision.maxVotes) (int $v.rollout.decision.minVotes) -}}
{{- fail (printf "rollout.decision.maxVotes (%d) is below minVotes (%d): every canary would be rolled back before it could be promoted; raise maxVotes" (int $v.rollout.decision.maxVotes) (int $v.rollout.decision.minVotes)) -}}
{{- end -}}
{{- if $v.rewards.enabled -}}
{{- range $name, $model := $v.rewards.models -}}
{{- if and $model.enabled (not $model.storageUri) -}}
{{- fail (printf "rewards.models.%s.enabled is true but its storageUri is empty: set the checkpoint's URI, or disable it" $name) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The /tmp emptyDir and its mount, for a read-only root filesystem. */}}
{{- define "musicrl.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpSizeLimit }}
{{- end -}}

{{- define "musicrl.tmpMount" -}}
- name: tmp
  mountPath: /tmp
{{- end -}}

{{/* A NetworkPolicy peer: the pods of one component of this release. */}}
{{- define "musicrl.peer" -}}
- podSelector:
    matchLabels:
      app.kubernetes.io/name: {{ include "musicrl.name" .root }}
      app.kubernetes.io/instance: {{ .root.Release.Name }}
      app.kubernetes.io/component: {{ .component }}
{{- end -}}
