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

{{/* The NRI attach runs the CNI plugin inside the daemon's container: the host folders its
node-local settings name must be there at the same paths. As JSON: path -> true for each such
folder the daemon does not already see at that path (stateDir in the cni-state volume,
draStateDir in dra-state, sysfsRoot /sys the container's own sysfs, anything under
/var/lib/cni in the cni-lib volume). Fails on a relative path, a "..", or a path where the
container mounts something else. */}}
{{- define "sriov-rs.nriHostPaths" -}}
{{- $settings := include "sriov-rs.cniSettings" . | fromJson -}}
{{- $cniDefaults := dict "sysfsRoot" "/sys" "stateDir" "/run/sriov-rs/cni" "logDir" "/var/log" "upstreamStateDir" "/var/lib/cni/sriov" "draStateDir" .Values.dra.stateDir -}}
{{- $taken := list "/etc/sriov-rs" "/host/sys" "/host/opt/cni/bin" "/host/etc/sriov-rs" "/run/sriov-rs" "/run/sriov-rs/node-state" "/run/sriov-rs/daemon" "/var/run/netns" "/var/run/nri" "/var/lib/kubelet" "/var/lib/kubelet/device-plugins" "/var/lib/kubelet/plugins_registry" "/var/lib/kubelet/pod-resources" "/var/lib/kubelet/plugins" "/var/run/k8s.cni.cncf.io/devinfo/dp" .Values.cdi.dir "/" -}}
{{- $out := dict -}}
{{- range $key := list "sysfsRoot" "stateDir" "logDir" "upstreamStateDir" "draStateDir" -}}
{{- $p := get $settings $key | default (get $cniDefaults $key) | toString | trimSuffix "/" -}}
{{- if or (not (hasPrefix "/" $p)) (has ".." (splitList "/" $p)) -}}
{{- fail (printf "cniSettings.%s %q: must be an absolute path without '..'" $key $p) -}}
{{- end -}}
{{- $seen := or (and (eq $key "sysfsRoot") (eq $p "/sys")) (and (eq $key "stateDir") (eq $p "/run/sriov-rs/cni")) (and (eq $key "draStateDir") (eq $p $.Values.dra.stateDir)) (eq $p "/var/lib/cni") (hasPrefix "/var/lib/cni/" $p) -}}
{{- if not $seen -}}
{{- if has $p $taken -}}
{{- fail (printf "cniSettings.%s %q: with dra.nri.enabled the daemon's container must see it at that path, where it mounts something else" $key $p) -}}
{{- end -}}
{{- $_ := set $out $p true -}}
{{- end -}}
{{- end -}}
{{- $out | toJson -}}
{{- end -}}
