{{/* Base name of every object: the release name, or release-chart when they differ. */}}
{{- define "sriov-rs.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "sriov-rs.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "sriov-rs.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: device-plugin
{{- end -}}

{{- define "sriov-rs.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "sriov-rs.configMapName" -}}
{{- printf "%s-config" (include "sriov-rs.fullname" .) -}}
{{- end -}}

{{/* The CNI plugin's node-local settings as JSON: cniSettings over the defaults that follow
other values (kubeletDir). */}}
{{- define "sriov-rs.cniSettings" -}}
{{- $defaults := dict "podResourcesSocket" (printf "%s/pod-resources/kubelet.sock" .Values.kubeletDir) -}}
{{- if eq (include "sriov-rs.anyDra" .) "true" -}}
{{- $_ := set $defaults "draStateDir" .Values.dra.stateDir -}}
{{- end -}}
{{- mustMergeOverwrite $defaults (deepCopy .Values.cniSettings) | toJson -}}
{{- end -}}

{{/* "true" when any node serves DRA (dra.mode or a dra.nodeModes entry other than
device-plugin): the DRA RBAC, policy and DeviceClasses are rendered then. */}}
{{- define "sriov-rs.anyDra" -}}
{{- $any := ne .Values.dra.mode "device-plugin" -}}
{{- range $n, $m := .Values.dra.nodeModes -}}
{{- if ne $m "device-plugin" }}{{ $any = true }}{{ end -}}
{{- end -}}
{{- $any -}}
{{- end -}}
