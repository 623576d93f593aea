{{/*
Labels of every object. No release name or Helm marker: the objects have
fixed names (one Weft per cluster), and deploy/kubernetes/weft.yaml is this
chart's output applied without Helm.
*/}}
{{- define "weft.labels" -}}
app.kubernetes.io/name: weft
app.kubernetes.io/part-of: weft
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}

{{- define "weft.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/* The Secret the agent reads the join token from. */}}
{{- define "weft.tokenSecret" -}}
{{ .Values.token.existingSecret | default "weft-token" }}
{{- end }}

{{/* The directory of the agent's socket: shared with the host. */}}
{{- define "weft.socketDir" -}}
{{ dir .Values.agent.socket }}
{{- end }}

{{/*
The one check across values that values.schema.json cannot state (it
checks the rest, also for helm lint, which ignores a template's fail).
*/}}
{{- define "weft.validate" -}}
{{- $sock := include "weft.socketDir" . -}}
{{- $state := .Values.agent.stateDir -}}
{{- if or (eq $sock $state) (hasPrefix (printf "%s/" $state) $sock) (hasPrefix (printf "%s/" $sock) $state) -}}
{{- fail (printf "agent.socket's directory %s and agent.stateDir %s overlap: keep the socket in a directory of its own (the default is /run/weft/agent.sock)" $sock $state) -}}
{{- end -}}
{{- end }}

{{/* The node paths mounted into the agent and the cleanup pods. */}}
{{- define "weft.hostVolumes" -}}
- name: state
  hostPath:
    path: {{ .Values.agent.stateDir }}
    type: DirectoryOrCreate
- name: run
  hostPath:
    path: {{ include "weft.socketDir" . }}
    type: DirectoryOrCreate
- name: bpffs
  hostPath:
    path: /sys/fs/bpf
    type: DirectoryOrCreate
- name: netns
  hostPath:
    path: /var/run/netns
    type: DirectoryOrCreate
- name: wireguard
  hostPath:
    path: /var/run/wireguard
    type: DirectoryOrCreate
- name: cgroup
  hostPath:
    path: /sys/fs/cgroup
    type: Directory
- name: cni-bin
  hostPath:
    path: {{ .Values.cni.binDir }}
    type: DirectoryOrCreate
- name: cni-conf
  hostPath:
    path: {{ .Values.cni.confDir }}
    type: DirectoryOrCreate
{{- end }}

{{/*
The agent's view of the node. The socket's directory and the network
namespaces are at the host's paths, as weft-cni (run by the container
runtime on the host) names them. bpffs is Bidirectional: when the node has
none mounted the agent mounts it, and the mount must be the host's for the
pinned maps to outlive the pod (an agent restart keeps traffic flowing).
*/}}
{{- define "weft.agentMounts" -}}
- name: state
  mountPath: {{ .Values.agent.stateDir }}
- name: run
  mountPath: {{ include "weft.socketDir" . }}
- name: bpffs
  mountPath: /sys/fs/bpf
  mountPropagation: Bidirectional
- name: netns
  mountPath: /var/run/netns
  mountPropagation: HostToContainer
- name: wireguard
  mountPath: /var/run/wireguard
{{- /* The node's cgroups: the userspace WireGuard helper moves out of the
pod's, so a restart of this pod leaves the tunnel running. */}}
- name: cgroup
  mountPath: /host/sys/fs/cgroup
{{- end }}

{{- define "weft.cniMounts" -}}
- name: cni-bin
  mountPath: /host/opt/cni/bin
- name: cni-conf
  mountPath: /host/etc/cni/net.d
{{- end }}
