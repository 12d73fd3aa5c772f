{{/*
Names. Kubernetes object names are DNS labels (63 characters at most); suffixed objects such as
"<fullname>-canary" cut the fullname further so the suffix always fits.
*/}}
{{- define "triton-classifier.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "triton-classifier.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* "<fullname>-<suffix>" within 63 characters. Call with (list $ "suffix"). */}}
{{- define "triton-classifier.suffixedName" -}}
{{- $root := index . 0 }}
{{- $suffix := index . 1 }}
{{- $base := include "triton-classifier.fullname" $root | trunc (int (sub 62 (len $suffix))) | trimSuffix "-" }}
{{- printf "%s-%s" $base $suffix }}
{{- end }}

{{- define "triton-classifier.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "triton-classifier.labels" -}}
helm.sh/chart: {{ include "triton-classifier.chart" . }}
{{ include "triton-classifier.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: {{ include "triton-classifier.name" . }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Labels that identify the release's pods; never change them (Deployment selectors are immutable). */}}
{{- define "triton-classifier.selectorLabels" -}}
app.kubernetes.io/name: {{ include "triton-classifier.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Selector of one track's server pods. Call with (list $ "stable"|"canary"). */}}
{{- define "triton-classifier.trackSelectorLabels" -}}
{{ include "triton-classifier.selectorLabels" (index . 0) }}
app.kubernetes.io/component: inference-server
track: {{ index . 1 }}
{{- end }}

{{- define "triton-classifier.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "triton-classifier.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Name of the Secret holding the admin key of the restricted APIs. The platform team creates it: a key the chart
generated would sit in the rendered manifest (and so in Helm's release record, CI logs and GitOps diffs), and an
offline render (helm template, Argo CD) would make a new one every time.
*/}}
{{- define "triton-classifier.adminSecretName" -}}
{{- .Values.security.restrictedApi.existingSecret }}
{{- end }}

{{/* Name of the Secret holding the gRPC port's certificate: the existing one, or the one cert-manager writes. */}}
{{- define "triton-classifier.grpcTlsSecretName" -}}
{{- default (include "triton-classifier.suffixedName" (list . "grpc-tls")) .Values.security.grpcTls.existingSecret }}
{{- end }}

{{/* Triton model names derived from the ensemble name. */}}
{{- define "triton-classifier.classifierModel" -}}
{{- printf "%s_classifier" .Values.model.name }}
{{- end }}

{{- define "triton-classifier.queueTimeModel" -}}
{{- default (include "triton-classifier.classifierModel" .) .Values.autoscaling.queueTime.model }}
{{- end }}

{{/*
"[registry/]repository:tag[@digest]" of an image the chart names itself. Call with (list $ <image values>), the values
holding repository, tag and digest. global.imageRegistry replaces the repository's registry (its first path component
when that has a dot or a port or is localhost, as Docker reads image names), or is put in front when it has none.
*/}}
{{- define "triton-classifier.imageRef" -}}
{{- $root := index . 0 }}
{{- $image := index . 1 }}
{{- $repository := $image.repository }}
{{- with (($root.Values.global).imageRegistry) }}
{{- $parts := splitList "/" $repository }}
{{- $first := first $parts }}
{{- if and (gt (len $parts) 1) (or (contains "." $first) (contains ":" $first) (eq $first "localhost")) }}
{{- $parts = rest $parts }}
{{- end }}
{{- $repository = printf "%s/%s" (trimSuffix "/" .) (join "/" $parts) }}
{{- end }}
{{- $ref := printf "%s:%s" $repository (toString $image.tag) }}
{{- if $image.digest }}{{- $ref = printf "%s@%s" $ref $image.digest }}{{- end }}
{{- $ref }}
{{- end }}

{{/*
The server image must be the one built from docker/tritonserver/Dockerfile: the python-backend preprocess model
imports Pillow, which the stock NGC image does not ship, so a pod on it would fail at model load. Refused at render
time instead. Call with (list <repository> "<values path>").
*/}}
{{- define "triton-classifier.validateServerImage" -}}
{{- $repository := index . 0 }}
{{- $path := index . 1 }}
{{- if not $repository }}
{{- fail (printf "%s is required: build the server image from docker/tritonserver/Dockerfile (the stock NGC Triton image lacks Pillow, which the preprocess model imports), push it and set %s to its repository (chart README, \"Server image\")" $path $path) }}
{{- end }}
{{- if regexMatch "(^|/)nvidia/tritonserver$" $repository }}
{{- fail (printf "%s %s is the stock NGC Triton image, which lacks Pillow: the preprocess model would fail to load. Build docker/tritonserver/Dockerfile FROM it, push the result and set %s to its repository (chart README, \"Server image\")" $path $repository $path) }}
{{- end }}
{{- end }}

{{/*
checkov skip annotations (checkov.io/skip<N>: "CHECK=reason") from a list of "CHECK=reason" strings. checkov splits
the value on "=", so a reason must not contain one.
*/}}
{{- define "triton-classifier.checkovSkips" -}}
{{- range $i, $skip := . }}
{{- if ne (len (splitList "=" $skip)) 2 }}
{{- fail (printf "chart bug: checkov skip %q must hold exactly one \"=\"" $skip) }}
{{- end }}
checkov.io/skip{{ add1 $i }}: {{ $skip | quote }}
{{- end }}
{{- end }}

{{/*
The deliberate trade-offs on images, as checkov skips (JSON list of "CHECK=reason"): a pull policy other than Always
(CKV_K8S_15) and an image without a digest (CKV_K8S_43). Each reason names the values that lift it. Call with a list
of (dict "key" "<values path of the image>" "image" <image values> ["policyPath" "<values path of its pullPolicy>"]
["digestPath" "<where its digest goes>"]).
*/}}
{{- define "triton-classifier.imageCheckovSkips" -}}
{{- $notAlways := list }}
{{- $noDigest := list }}
{{- range . }}
{{- if ne (toString .image.pullPolicy) "Always" }}{{- $notAlways = append $notAlways (default (printf "%s.pullPolicy" .key) .policyPath) }}{{- end }}
{{- if not .image.digest }}{{- $noDigest = append $noDigest (default (printf "%s.digest" .key) .digestPath) }}{{- end }}
{{- end }}
{{- $skips := list }}
{{- if $notAlways }}
{{- $skips = append $skips (printf "CKV_K8S_15=images are pinned by tag (and digest when set), so nodes reuse their copy instead of pulling again at every pod start; set %s to Always to re-resolve tags" (join ", " (uniq $notAlways))) }}
{{- end }}
{{- if $noDigest }}
{{- $skips = append $skips (printf "CKV_K8S_43=pinned by tag: a digest exists only once you have pushed your build; set %s to pin by digest" (join ", " (uniq $noDigest))) }}
{{- end }}
{{- toJson $skips }}
{{- end }}

{{/* True ("true") when an API group/version is installed or assumed. Call with (list $ "group/version"). */}}
{{- define "triton-classifier.hasApi" -}}
{{- $root := index . 0 }}
{{- $api := index . 1 }}
{{- if or ($root.Capabilities.APIVersions.Has $api) (has $api $root.Values.capabilities.assumeApiVersions) }}true{{- end }}
{{- end }}

{{/*
Security context of every container: the "restricted" Pod Security Standard. containerSecurityContext may add
fields (SELinux options, a Localhost seccomp or AppArmor profile); its schema refuses any value that would weaken the
standard, and the fields below cannot be overridden at all.
*/}}
{{- define "triton-classifier.containerSecurityContext" -}}
{{- $fixed := dict
      "allowPrivilegeEscalation" false
      "readOnlyRootFilesystem" true
      "runAsNonRoot" true
      "privileged" false
      "runAsUser" (int64 .Values.podSecurityContext.runAsUser)
      "runAsGroup" (int64 .Values.podSecurityContext.runAsGroup)
      "capabilities" (dict "drop" (list "ALL")) }}
{{- $ctx := mergeOverwrite (dict "seccompProfile" (dict "type" "RuntimeDefault")) (deepCopy (default (dict) .Values.containerSecurityContext)) $fixed }}
{{- toYaml $ctx }}
{{- end }}

{{/*
A container of initContainers or sidecars: the user's spec with the chart's restricted securityContext in place of
its own. Only fields that cannot weaken it are taken from the user's: seLinuxOptions, and a seccomp or AppArmor
profile of type RuntimeDefault or Localhost. Call with (list $ <container>).
*/}}
{{- define "triton-classifier.extraContainer" -}}
{{- $root := index . 0 }}
{{- $container := deepCopy (index . 1) }}
{{- $ctx := include "triton-classifier.containerSecurityContext" $root | fromYaml }}
{{- $own := default (dict) $container.securityContext }}
{{- with $own.seLinuxOptions }}{{- $_ := set $ctx "seLinuxOptions" . }}{{- end }}
{{- range $field := list "seccompProfile" "appArmorProfile" }}
{{- $profile := index $own $field }}
{{- if and $profile (has (toString $profile.type) (list "RuntimeDefault" "Localhost")) }}{{- $_ := set $ctx $field $profile }}{{- end }}
{{- end }}
{{- $_ := set $container "securityContext" $ctx }}
{{- toYaml (list $container) }}
{{- end }}

{{- define "triton-classifier.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.podSecurityContext.runAsUser }}
runAsGroup: {{ .Values.podSecurityContext.runAsGroup }}
fsGroup: {{ .Values.podSecurityContext.fsGroup }}
fsGroupChangePolicy: OnRootMismatch
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/*
Checks that stop a release that could not work or would drop requests. They run once, from the Deployment
template.
*/}}
{{- define "triton-classifier.validate" -}}
{{- $v := .Values }}
{{- $grace := int $v.terminationGracePeriodSeconds }}
{{- $needed := add (int $v.server.exitTimeoutSecs) (int $v.lifecycle.preStopSleepSeconds) }}
{{- if le $grace (int $needed) }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must be greater than lifecycle.preStopSleepSeconds + server.exitTimeoutSecs (%d), or Kubernetes kills Triton while it drains in-flight requests" $grace (int $needed)) }}
{{- end }}
{{- if eq (toString $v.image.tag) "latest" }}
{{- fail "image.tag must be a pinned Triton release such as 26.11-py3, not latest" }}
{{- end }}
{{- include "triton-classifier.validateServerImage" (list $v.image.repository "image.repository") }}
{{- if eq $v.model.classifierBackend "python" }}
{{- fail "model.classifierBackend python is for the local server only: that classifier imports onnxruntime, which the server image (docker/tritonserver/Dockerfile) does not install; use onnxruntime (the NGC image's native backend) or tensorrt" }}
{{- end }}
{{- include "triton-classifier.validateRepository" (list $v.modelRepository "modelRepository") }}
{{- if and (ne $v.server.modelControlMode "none") (not (and $v.security.restrictedApi.enabled (has "model-repository" $v.security.restrictedApi.http) (has "model-repository" $v.security.restrictedApi.grpc))) }}
{{- fail "server.modelControlMode other than none lets callers load models; keep model-repository in security.restrictedApi.http and .grpc with restrictedApi enabled" }}
{{- end }}
{{- if $v.tensorrt.build.enabled }}
{{- if ne $v.model.classifierBackend "tensorrt" }}
{{- fail "tensorrt.build.enabled needs model.classifierBackend: tensorrt (the repository's classifier config must be a tensorrt_plan)" }}
{{- end }}
{{- if lt (int $v.gpu.count) 1 }}
{{- fail "tensorrt.build.enabled needs gpu.count >= 1: trtexec builds the plan for the GPU of the node" }}
{{- end }}
{{- if eq $v.modelRepository.source "objectStore" }}
{{- fail "tensorrt.build.enabled needs modelRepository.source pvc or image: the plan is written into a local copy of the repository" }}
{{- end }}
{{- $trtRelease := regexFind "^[0-9]+\\.[0-9]+" (toString $v.tensorrt.build.image.tag) }}
{{- $tritonRelease := regexFind "^[0-9]+\\.[0-9]+" (toString $v.image.tag) }}
{{- if and (ne $trtRelease $tritonRelease) (not $v.tensorrt.build.allowReleaseMismatch) }}
{{- fail (printf "tensorrt.build.image.tag (%s) and image.tag (%s) must come from the same release: a plan only loads in the TensorRT version that built it" (toString $v.tensorrt.build.image.tag) (toString $v.image.tag)) }}
{{- end }}
{{- if not (and (le (int $v.tensorrt.build.minBatchSize) (int $v.tensorrt.build.optBatchSize)) (le (int $v.tensorrt.build.optBatchSize) (int $v.tensorrt.build.maxBatchSize))) }}
{{- fail "tensorrt.build needs minBatchSize <= optBatchSize <= maxBatchSize" }}
{{- end }}
{{- end }}
{{- if and (eq $v.model.classifierBackend "tensorrt") (lt (int $v.gpu.count) 1) }}
{{- fail "model.classifierBackend tensorrt needs gpu.count >= 1" }}
{{- end }}
{{- if and $v.autoscaling.enabled (gt (int $v.autoscaling.minReplicas) (int $v.autoscaling.maxReplicas)) }}
{{- fail "autoscaling.minReplicas must not exceed autoscaling.maxReplicas" }}
{{- end }}
{{- if and $v.security.restrictedApi.enabled (not $v.security.restrictedApi.existingSecret) }}
{{- fail (printf "security.restrictedApi.existingSecret is required while security.restrictedApi.enabled: create the Secret first (kubectl -n %s create secret generic <name> --from-literal=%s=\"$(openssl rand -hex 32)\"); the chart never renders the key (chart README, \"Admin key\")" .Release.Namespace $v.security.restrictedApi.secretKey) }}
{{- end }}
{{- include "triton-classifier.validateGrpcTls" . }}
{{- include "triton-classifier.validateExtras" . }}
{{- if and $v.monitoring.serviceMonitor.enabled $v.monitoring.podMonitor.enabled }}
{{- fail "monitoring.serviceMonitor.enabled and monitoring.podMonitor.enabled both scrape the same pods: enable one" }}
{{- end }}
{{- range $kind := list "serviceMonitor" "podMonitor" }}
{{- $m := index $v.monitoring $kind }}
{{- if and $m.tlsConfig (ne $m.scheme "https") }}
{{- fail (printf "monitoring.%s.tlsConfig is set but monitoring.%s.scheme is %s: set scheme https (Triton's metrics port itself has no TLS)" $kind $kind $m.scheme) }}
{{- end }}
{{- end }}
{{- if and (or $v.service.loadBalancerIP $v.service.loadBalancerSourceRanges) (ne $v.service.type "LoadBalancer") }}
{{- fail (printf "service.loadBalancerIP and service.loadBalancerSourceRanges need service.type LoadBalancer (it is %s)" $v.service.type) }}
{{- end }}
{{- if and $v.ingress.enabled (not $v.ingress.hosts) }}
{{- fail "ingress.hosts needs at least one host name, e.g. [digits.ml.example.com]" }}
{{- end }}
{{- if and (eq $v.updateStrategy.type "Recreate") $v.updateStrategy.rollingUpdate }}
{{- fail "updateStrategy.rollingUpdate must be left out when updateStrategy.type is Recreate (set it to null)" }}
{{- end }}
{{- end }}

{{/* gRPC TLS: one certificate source, and cert-manager's API when it is the source. */}}
{{- define "triton-classifier.validateGrpcTls" -}}
{{- $tls := .Values.security.grpcTls }}
{{- if $tls.enabled }}
{{- if and $tls.existingSecret $tls.certManager.enabled }}
{{- fail "security.grpcTls: set existingSecret or certManager.enabled, not both" }}
{{- end }}
{{- if not (or $tls.existingSecret $tls.certManager.enabled) }}
{{- fail "security.grpcTls.enabled needs a certificate: security.grpcTls.existingSecret (a kubernetes.io/tls Secret) or security.grpcTls.certManager.enabled" }}
{{- end }}
{{- if $tls.certManager.enabled }}
{{- if not $tls.certManager.issuerRef.name }}
{{- fail "security.grpcTls.certManager.issuerRef.name is required: the Issuer or ClusterIssuer that signs the gRPC certificate" }}
{{- end }}
{{- if not (include "triton-classifier.hasApi" (list . "cert-manager.io/v1")) }}
{{- fail "security.grpcTls.certManager.enabled needs the cert-manager.io/v1 API: install cert-manager, or list the API in capabilities.assumeApiVersions for an offline render (without it the pods would wait for a Secret nobody writes)" }}
{{- end }}
{{- end }}
{{- else if $tls.certManager.enabled }}
{{- fail "security.grpcTls.certManager.enabled needs security.grpcTls.enabled" }}
{{- end }}
{{- end }}

{{/* Extra volumes, mounts and containers must not collide with the chart's own. */}}
{{- define "triton-classifier.validateExtras" -}}
{{- $v := .Values }}
{{- $reserved := list "dshm" "tmp" "liveness-probe" "model-repository" "model-source" "gcs-key" "grpc-tls" }}
{{- $volumes := list }}
{{- range $v.extraVolumes }}
{{- if has .name $reserved }}{{- fail (printf "extraVolumes: the name %s is the chart's own volume; pick another" .name) }}{{- end }}
{{- $volumes = append $volumes .name }}
{{- end }}
{{- range $v.extraVolumeMounts }}
{{- if not (has .name $volumes) }}{{- fail (printf "extraVolumeMounts: %s is not a volume of extraVolumes" .name) }}{{- end }}
{{- end }}
{{- $containers := list "tritonserver" "copy-model-repository" "build-tensorrt-plan" }}
{{- range concat $v.initContainers $v.sidecars }}
{{- if has .name $containers }}{{- fail (printf "initContainers/sidecars: the name %s is taken (the chart's own, or used twice)" .name) }}{{- end }}
{{- $containers = append $containers .name }}
{{- end }}
{{- end }}

{{/* Checks one repository source. Call with (list <modelRepository values> "<values path>"). */}}
{{- define "triton-classifier.validateRepository" -}}
{{- $r := index . 0 }}
{{- $path := index . 1 }}
{{- if eq $r.source "pvc" }}
{{- if not $r.pvc.claimName }}{{- fail (printf "%s.pvc.claimName is required when %s.source is pvc" $path $path) }}{{- end }}
{{- else if eq $r.source "objectStore" }}
{{- if not (regexMatch "^(s3|gs|as)://.+" $r.objectStore.url) }}
{{- fail (printf "%s.objectStore.url must start with s3://, gs:// or as:// when %s.source is objectStore" $path $path) }}
{{- end }}
{{- else if eq $r.source "image" }}
{{- if not (and $r.image.repository $r.image.tag) }}
{{- fail (printf "%s.image.repository and .tag are required when %s.source is image" $path $path) }}
{{- end }}
{{- if eq (toString $r.image.tag) "latest" }}{{- fail (printf "%s.image.tag must be pinned, not latest" $path) }}{{- end }}
{{- end }}
{{- end }}

{{/*
Scrape settings shared by the ServiceMonitor endpoint and the PodMonitor endpoint. Call with (list <monitor values>
<relabelings the chart adds first>).
*/}}
{{- define "triton-classifier.scrapeEndpoint" -}}
{{- $m := index . 0 }}
{{- $relabelings := concat (index . 1) $m.relabelings }}
path: /metrics
scheme: {{ $m.scheme }}
interval: {{ $m.interval }}
scrapeTimeout: {{ $m.scrapeTimeout }}
{{- with $m.tlsConfig }}
tlsConfig:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $relabelings }}
relabelings:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $m.metricRelabelings }}
metricRelabelings:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}
