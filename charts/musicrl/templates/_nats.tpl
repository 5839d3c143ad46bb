{{/* The bundled NATS servers' configuration file. */}}
{{- define "musicrl.natsConf" -}}
{{- $n := .Values.nats.bundled -}}
# $SERVER_NAME is the pod's name (set in the StatefulSet): JetStream needs a stable, unique one per server.
server_name: $SERVER_NAME
port: 4222
http_port: 8222
pid_file: /var/run/nats/nats.pid  # for the lame-duck signal of the preStop hook
max_payload: {{ int $n.maxPayloadBytes }}
lame_duck_duration: 30s
jetstream {
  store_dir: /data/jetstream
  # The PVC's size in decimal units (10Gi -> 10G, 10^9 bytes each): about 7 % below the volume, which leaves room
  # for the filesystem's own use, so JetStream refuses writes before the disk is full.
  max_file_store: {{ $n.storageSize | replace "Ti" "T" | replace "Gi" "G" | replace "Mi" "M" }}
}
{{- if ge (int $n.replicas) 3 }}
cluster {
  name: {{ include "musicrl.natsName" $ }}
  port: 6222
  routes: [
    {{- range $i := until (int $n.replicas) }}
    nats://{{ include "musicrl.natsName" $ }}-{{ $i }}.{{ include "musicrl.natsName" $ }}-headless.{{ $.Release.Namespace }}.{{ $.Values.kserve.clusterDomain }}:6222
    {{- end }}
  ]
}
{{- end }}
{{- end -}}
