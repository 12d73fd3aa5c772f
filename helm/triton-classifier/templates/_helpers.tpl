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

{{/* Name of the Secret holding the admin key of the restricted APIs. */}}
{{- define "triton-classifier.adminSecretName" -}}
{{- default (include "triton-classifier.suffixedName" (list . "admin-key")) .Values.security.restrictedApi.existingSecret }}
{{- end }}

{{/* Triton model names derived from the ensemble name. */}}
{{- define "triton-classifier.classifierModel" -}}
{{- printf "%s_classifier" .Values.model.name }}
{{- end }}

{{- define "triton-classifier.queueTimeModel" -}}
{{- default (include "triton-classifier.classifierModel" .) .Values.autoscaling.queueTime.model }}
{{- end }}

{{/* "repository:tag[@digest]" of an image. Call with (dict "repository" .. "tag" .. "digest" ..). */}}
{{- define "triton-classifier.imageRef" -}}
{{- $ref := printf "%s:%s" .repository (toString .tag) }}
{{- if .digest }}{{- $ref = printf "%s@%s" $ref .digest }}{{- end }}
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
of (dict "key" "<values path of the image>" "image" <image values> ["policyKey" "<values path of its pullPolicy>"]).
*/}}
{{- define "triton-classifier.imageCheckovSkips" -}}
{{- $notAlways := list }}
{{- $noDigest := list }}
{{- range . }}
{{- if ne (toString .image.pullPolicy) "Always" }}{{- $notAlways = append $notAlways (printf "%s.pullPolicy" (default .key .policyKey)) }}{{- end }}
{{- if not .image.digest }}{{- $noDigest = append $noDigest (printf "%s.digest" .key) }}{{- end }}
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
Security context of every container: the "restricted" Pod Security Standard. Fixed on purpose, not taken
from values, so no values file can weaken it.
*/}}
{{- define "triton-classifier.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: {{ .Values.podSecurityContext.runAsUser }}
runAsGroup: {{ .Values.podSecurityContext.runAsGroup }}
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
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
