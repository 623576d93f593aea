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
Checks across values that values.schema.json cannot state, with what to do.
Included by every template that depends on them.
*/}}
{{- define "weft.validate" -}}
{{- $t := .Values.token -}}
{{- if and $t.existingSecret $t.value -}}
{{- fail (printf "token: both token.existingSecret (%q; weft-token is the default) and token.value are set: give exactly one. To have the chart create the Secret from token.value, also pass --set token.existingSecret=" $t.existingSecret) -}}
{{- end -}}
{{- if not (or $t.existingSecret $t.value) -}}
{{- fail "token: set token.existingSecret (a Secret in the namespace holding the join token, e.g. weft-token) or token.value (the token from 'meshctl token create'; --set-file token.value=./token)" -}}
{{- end -}}
{{- if and $t.value (not (hasPrefix "weft1." (trim $t.value))) -}}
{{- fail "token.value is not a Weft join token (it starts with weft1.): give the whole string 'meshctl token create' printed" -}}
{{- end -}}
{{- if and .Values.cni.chainInto (ne .Values.cni.mode "chained") -}}
{{- fail (printf "cni.chainInto (%q) is only for cni.mode=chained; cni.mode is %s" .Values.cni.chainInto .Values.cni.mode) -}}
{{- end -}}
{{- range $k, $p := dict "cni.binDir" .Values.cni.binDir "cni.confDir" .Values.cni.confDir "agent.stateDir" .Values.agent.stateDir "agent.socket" .Values.agent.socket -}}
{{- if ne (clean $p) $p -}}
{{- fail (printf "%s %q is not a clean path (no '.', '..' or trailing '/' parts): write it as %q" $k $p (clean $p)) -}}
{{- end -}}
{{- end -}}
{{- $sock := include "weft.socketDir" . -}}
{{- if or (eq $sock .Values.agent.stateDir) (hasPrefix (printf "%s/" .Values.agent.stateDir) $sock) (hasPrefix (printf "%s/" $sock) .Values.agent.stateDir) -}}
{{- fail (printf "agent.socket's directory %s and agent.stateDir %s overlap: keep the socket in a directory of its own (the default is /run/weft/agent.sock)" $sock .Values.agent.stateDir) -}}
{{- end -}}
{{- range .Values.agent.extraArgs -}}
{{- if regexMatch "^--?(socket|state-dir|config|node-name|log-level)(=|$)" . -}}
{{- fail (printf "agent.extraArgs: %s is set by the chart (agent.socket, agent.stateDir, agent.logLevel, the node's name): use those values instead" .) -}}
{{- end -}}
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
{{- end }}

{{- define "weft.cniMounts" -}}
- name: cni-bin
  mountPath: /host/opt/cni/bin
- name: cni-conf
  mountPath: /host/etc/cni/net.d
{{- end }}
