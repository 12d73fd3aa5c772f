{{/*
One Triton Deployment. The stable and the canary Deployment are both rendered from here so they can only differ
in what the canary is meant to change: image, model repository, replicas and labels.

Call with (dict "root" $ "track" "stable"|"canary" "name" <object name> "repo" <modelRepository values>
               "image" <image values> "imageKey" <values path of that image> "podLabels" <map>
               ["replicas" <int>, left out under an HPA]).
*/}}
{{- define "triton-classifier.deployment" -}}
{{- $root := .root }}
{{- $v := $root.Values }}
{{- $repo := .repo }}
{{- $track := .track }}
{{- $trt := $v.tensorrt.build }}
{{- $classifier := include "triton-classifier.classifierModel" $root }}
{{- /* The repository is copied into an emptyDir when it comes from an image, or when a plan is built into it. */}}
{{- $staged := or (eq $repo.source "image") $trt.enabled }}
{{- $repoArg := $repo.mountPath }}
{{- if eq $repo.source "objectStore" }}{{- $repoArg = $repo.objectStore.url }}{{- end }}
{{- $serverImage := include "triton-classifier.imageRef" (list $root .image) }}
{{- $ra := $v.security.restrictedApi }}
{{- $gcsKeyDir := "/var/run/secrets/triton/gcs" }}
{{- $live := $v.probes.liveness }}
{{- $probeDir := "/opt/triton-probe" }}
{{- /* checkov findings that are deliberate trade-offs here, each with its reason (chart README, Security notes). */}}
{{- $images := list (dict "key" .imageKey "image" .image "policyPath" "image.pullPolicy") }}
{{- if eq $repo.source "image" }}{{- $images = append $images (dict "key" "modelRepository.image" "image" $repo.image) }}{{- end }}
{{- if $trt.enabled }}{{- $images = append $images (dict "key" "tensorrt.build.image" "image" $trt.image) }}{{- end }}
{{- range $group := list "initContainers" "sidecars" }}
{{- range $i, $c := index $v $group }}
{{- $images = append $images (dict "key" (printf "%s[%d]" $group $i) "image" (dict "pullPolicy" (default "IfNotPresent" $c.imagePullPolicy) "digest" (contains "@sha256:" $c.image)) "policyPath" (printf "%s[%d].imagePullPolicy" $group $i) "digestPath" (printf "%s[%d].image (name@sha256:...)" $group $i)) }}
{{- end }}
{{- end }}
{{- $skips := include "triton-classifier.imageCheckovSkips" $images | fromJsonArray }}
{{- $tls := $v.security.grpcTls }}
{{- $tlsDir := "/var/run/secrets/triton/grpc-tls" }}
{{- $envSecrets := list }}
{{- if $ra.enabled }}
{{- $envSecrets = append $envSecrets "the admin key reaches Triton only on its command line (--http-restricted-api), which the kubelet fills from an env var" }}
{{- end }}
{{- if and (eq $repo.source "objectStore") $repo.objectStore.credentialsSecret }}
{{- $envSecrets = append $envSecrets "the object-store SDKs in Triton read their credentials from env vars only" }}
{{- end }}
{{- if $envSecrets }}
{{- $skips = append $skips (printf "CKV_K8S_35=%s" (join "; " $envSecrets)) }}
{{- end }}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ .name }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "triton-classifier.labels" $root | nindent 4 }}
    app.kubernetes.io/component: inference-server
    track: {{ $track }}
  {{- if or $skips $v.deploymentAnnotations }}
  annotations:
    {{- with $v.deploymentAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
    {{- with $skips }}
    {{- include "triton-classifier.checkovSkips" . | nindent 4 }}
    {{- end }}
  {{- end }}
spec:
  {{- if hasKey . "replicas" }}
  replicas: {{ .replicas }}
  {{- end }}
  revisionHistoryLimit: {{ $v.revisionHistoryLimit }}
  selector:
    matchLabels:
      {{- include "triton-classifier.trackSelectorLabels" (list $root $track) | nindent 6 }}
  strategy:
    {{- toYaml $v.updateStrategy | nindent 4 }}
  template:
    metadata:
      labels:
        {{- include "triton-classifier.labels" $root | nindent 8 }}
        app.kubernetes.io/component: inference-server
        track: {{ $track }}
        {{- with .podLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      annotations:
        kubectl.kubernetes.io/default-container: tritonserver
        {{- if $live.inference.enabled }}
        # A changed probe script rolls the pods (they read it from a ConfigMap).
        checksum/liveness-probe: {{ $root.Files.Get "files/liveness_inference.py" | sha256sum }}
        {{- end }}
        {{- with $v.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      serviceAccountName: {{ include "triton-classifier.serviceAccountName" $root }}
      automountServiceAccountToken: false
      enableServiceLinks: false
      terminationGracePeriodSeconds: {{ $v.terminationGracePeriodSeconds }}
      securityContext:
        {{- include "triton-classifier.podSecurityContext" $root | nindent 8 }}
      {{- with $v.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.priorityClassName }}
      priorityClassName: {{ . }}
      {{- end }}
      {{- with $v.runtimeClassName }}
      runtimeClassName: {{ . }}
      {{- end }}
      {{- with $v.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- $affinity := deepCopy $v.affinity }}
      {{- if and (ne $v.podAntiAffinity "none") (not (hasKey $affinity "podAntiAffinity")) }}
      {{- $term := dict "labelSelector" (dict "matchLabels" (include "triton-classifier.trackSelectorLabels" (list $root $track) | fromYaml)) "topologyKey" "kubernetes.io/hostname" }}
      {{- if eq $v.podAntiAffinity "hard" }}
      {{- $_ := set $affinity "podAntiAffinity" (dict "requiredDuringSchedulingIgnoredDuringExecution" (list $term)) }}
      {{- else }}
      {{- $_ := set $affinity "podAntiAffinity" (dict "preferredDuringSchedulingIgnoredDuringExecution" (list (dict "weight" 100 "podAffinityTerm" $term))) }}
      {{- end }}
      {{- end }}
      {{- with $affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- if $v.topologySpreadConstraints }}
      {{- $constraints := list }}
      {{- range $v.topologySpreadConstraints }}
      {{- $c := deepCopy . }}
      {{- if not (hasKey $c "labelSelector") }}
      {{- $_ := set $c "labelSelector" (dict "matchLabels" (include "triton-classifier.trackSelectorLabels" (list $root $track) | fromYaml)) }}
      {{- end }}
      {{- if not (hasKey $c "matchLabelKeys") }}
      {{- $_ := set $c "matchLabelKeys" (list "pod-template-hash") }}
      {{- end }}
      {{- $constraints = append $constraints $c }}
      {{- end }}
      topologySpreadConstraints:
        {{- toYaml $constraints | nindent 8 }}
      {{- end }}
      {{- if or $staged $v.initContainers }}
      initContainers:
        {{- range $v.initContainers }}
        {{- include "triton-classifier.extraContainer" (list $root .) | nindent 8 }}
        {{- end }}
        {{- if $staged }}
        {{- if eq $repo.source "image" }}
        - name: copy-model-repository
          image: {{ include "triton-classifier.imageRef" (list $root $repo.image) }}
          imagePullPolicy: {{ $repo.image.pullPolicy }}
          command: ["cp", "-R", "{{ trimSuffix "/" $repo.image.path }}/.", "/staging/"]
        {{- else }}
        - name: copy-model-repository
          image: {{ $serverImage }}
          imagePullPolicy: {{ .image.pullPolicy }}
          command: ["cp", "-R", "/source/.", "/staging/"]
        {{- end }}
          securityContext:
            {{- include "triton-classifier.containerSecurityContext" $root | nindent 12 }}
          resources:
            requests:
              cpu: 100m
              memory: 64Mi
            limits:
              cpu: "1"
              memory: 256Mi
          volumeMounts:
            - name: model-repository
              mountPath: /staging
            {{- if eq $repo.source "pvc" }}
            - name: model-source
              mountPath: /source
              readOnly: true
              {{- with $repo.pvc.subPath }}
              subPath: {{ . }}
              {{- end }}
            {{- end }}
        {{- if $trt.enabled }}
        {{- $dims := join "x" $trt.inputShape }}
        # Plans are bound to the GPU model and the TensorRT version, so each pod builds its own on its node, one per
        # version directory of the model that holds the ONNX file.
        - name: build-tensorrt-plan
          image: {{ include "triton-classifier.imageRef" (list $root $trt.image) }}
          imagePullPolicy: {{ $trt.image.pullPolicy }}
          command:
            - sh
            - -ec
            - |
              built=no
              for dir in "$REPOSITORY/$MODEL"/*/; do
                [ -f "$dir$ONNX_FILE" ] || continue
                echo "building $dir$PLAN_FILE"
                "$TRTEXEC" --onnx="$dir$ONNX_FILE" --saveEngine="$dir$PLAN_FILE" "$@"
                built=yes
              done
              [ "$built" = yes ] || { echo "no $ONNX_FILE in any version directory of $REPOSITORY/$MODEL" >&2; exit 1; }
            - build-tensorrt-plan
          args:
            - --minShapes={{ $trt.inputName }}:{{ $trt.minBatchSize }}x{{ $dims }}
            - --optShapes={{ $trt.inputName }}:{{ $trt.optBatchSize }}x{{ $dims }}
            - --maxShapes={{ $trt.inputName }}:{{ $trt.maxBatchSize }}x{{ $dims }}
            - --memPoolSize=workspace:{{ $trt.workspaceMiB }}M
            - --skipInference
            {{- if $trt.fp16 }}
            - --fp16
            {{- end }}
            {{- range $trt.extraArgs }}
            - {{ . | quote }}
            {{- end }}
          env:
            - name: HOME
              value: /tmp
            - name: REPOSITORY
              value: {{ $repo.mountPath }}
            - name: MODEL
              value: {{ default $classifier $trt.model }}
            - name: ONNX_FILE
              value: {{ $trt.onnxFile }}
            - name: PLAN_FILE
              value: {{ $trt.planFile }}
            - name: TRTEXEC
              value: {{ $trt.trtexecPath }}
          securityContext:
            {{- include "triton-classifier.containerSecurityContext" $root | nindent 12 }}
          resources:
            {{- $trtResources := deepCopy $trt.resources }}
            {{- $limits := default (dict) $trtResources.limits }}
            {{- $_ := set $limits "nvidia.com/gpu" (int $v.gpu.count) }}
            {{- $_ := set $trtResources "limits" $limits }}
            {{- toYaml $trtResources | nindent 12 }}
          volumeMounts:
            - name: model-repository
              mountPath: {{ $repo.mountPath }}
            - name: tmp
              mountPath: /tmp
        {{- end }}
        {{- end }}
      {{- end }}
      containers:
        - name: tritonserver
          image: {{ $serverImage }}
          imagePullPolicy: {{ .image.pullPolicy }}
          command: ["tritonserver"]
          args:
            - --model-repository={{ $repoArg }}
            - --model-control-mode={{ $v.server.modelControlMode }}
            {{- if eq $v.server.modelControlMode "explicit" }}
            {{- range $v.server.loadModels }}
            - --load-model={{ . }}
            {{- end }}
            {{- end }}
            {{- with $v.server.modelConfigName }}
            # Each model's configs/<name>.pbtxt where present (e.g. what `triton-deploy tune` chose), else config.pbtxt.
            - --model-config-name={{ . }}
            {{- end }}
            - --strict-readiness={{ $v.server.strictReadiness }}
            - --exit-timeout-secs={{ $v.server.exitTimeoutSecs }}
            - --http-port={{ $v.ports.http }}
            - --grpc-port={{ $v.ports.grpc }}
            - --metrics-port={{ $v.ports.metrics }}
            - --allow-metrics=true
            - --allow-gpu-metrics={{ gt (int $v.gpu.count) 0 }}
            - --allow-cpu-metrics={{ $v.server.metrics.allowCpuMetrics }}
            - --metrics-interval-ms={{ $v.server.metrics.intervalMs }}
            - --log-verbose={{ $v.server.log.verbose }}
            - --log-info={{ $v.server.log.info }}
            - --log-warning={{ $v.server.log.warning }}
            - --log-error={{ $v.server.log.error }}
            - --log-format={{ $v.server.log.format }}
            - --backend-config=python,shm-default-byte-size={{ int64 $v.server.pythonBackend.shmDefaultByteSize }}
            - --backend-config=python,shm-growth-byte-size={{ int64 $v.server.pythonBackend.shmGrowthByteSize }}
            # Refuses HTTP request bodies above this many bytes (Triton 25.x and later; not in 2.51).
            - --http-max-input-size={{ int64 $v.server.httpMaxInputSize }}
            {{- if $ra.enabled }}
            {{- if $ra.http }}
            - --http-restricted-api={{ join "," $ra.http }}:{{ $ra.header }}=$(TRITON_ADMIN_KEY)
            {{- end }}
            {{- if $ra.grpc }}
            - --grpc-restricted-protocol={{ join "," $ra.grpc }}:{{ $ra.header }}=$(TRITON_ADMIN_KEY)
            {{- end }}
            {{- end }}
            {{- if $tls.enabled }}
            # gRPC over TLS with the certificate Secret mounted read-only (Triton reads it once, at start).
            - --grpc-use-ssl=true
            - --grpc-server-cert={{ $tlsDir }}/tls.crt
            - --grpc-server-key={{ $tlsDir }}/tls.key
            {{- if $tls.mutual }}
            - --grpc-root-cert={{ $tlsDir }}/ca.crt
            - --grpc-use-ssl-mutual=true
            {{- end }}
            {{- end }}
            {{- range $v.server.extraArgs }}
            - {{ . | quote }}
            {{- end }}
          ports:
            - name: http
              containerPort: {{ $v.ports.http }}
              protocol: TCP
            - name: grpc
              containerPort: {{ $v.ports.grpc }}
              protocol: TCP
            - name: metrics
              containerPort: {{ $v.ports.metrics }}
              protocol: TCP
          env:
            # The python-backend stubs and their imports write caches under $HOME; the root filesystem is read-only.
            - name: HOME
              value: /tmp
            {{- if $ra.enabled }}
            - name: TRITON_ADMIN_KEY
              valueFrom:
                secretKeyRef:
                  name: {{ include "triton-classifier.adminSecretName" $root }}
                  key: {{ $ra.secretKey }}
            {{- end }}
            {{- if and (eq $repo.source "objectStore") $repo.objectStore.gcsKeySecret }}
            - name: GOOGLE_APPLICATION_CREDENTIALS
              value: {{ $gcsKeyDir }}/{{ $repo.objectStore.gcsKeySecretKey }}
            {{- end }}
            {{- with $v.server.extraEnv }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          {{- $envFrom := list }}
          {{- if and (eq $repo.source "objectStore") $repo.objectStore.credentialsSecret }}
          {{- $envFrom = append $envFrom (dict "secretRef" (dict "name" $repo.objectStore.credentialsSecret)) }}
          {{- end }}
          {{- with concat $envFrom $v.extraEnvFrom }}
          envFrom:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          startupProbe:
            httpGet:
              path: /v2/health/ready
              port: http
            periodSeconds: {{ $v.probes.startup.periodSeconds }}
            timeoutSeconds: {{ $v.probes.startup.timeoutSeconds }}
            # ceil(budget / period) checks: the budget covers loading every model.
            failureThreshold: {{ div (add (int $v.probes.startup.budgetSeconds) (int $v.probes.startup.periodSeconds) -1) (int $v.probes.startup.periodSeconds) }}
          readinessProbe:
            httpGet:
              path: /v2/health/ready
              port: http
            periodSeconds: {{ $v.probes.readiness.periodSeconds }}
            timeoutSeconds: {{ $v.probes.readiness.timeoutSeconds }}
            failureThreshold: {{ $v.probes.readiness.failureThreshold }}
          livenessProbe:
            {{- if $live.inference.enabled }}
            # One tiny real inference through the ensemble: /v2/health/live stays true while a dead
            # python-backend stub fails every request.
            exec:
              command:
                - python3
                - -I
                - {{ $probeDir }}/liveness_inference.py
                - --port={{ $v.ports.http }}
                - --model={{ $v.model.name }}
                - --timeout={{ max 1 (sub (int $live.timeoutSeconds) 1) }}
                {{- if and $ra.enabled (has "inference" $ra.http) }}
                - --key-header={{ $ra.header }}
                {{- end }}
            {{- else }}
            httpGet:
              path: /v2/health/live
              port: http
            {{- end }}
            periodSeconds: {{ $live.periodSeconds }}
            timeoutSeconds: {{ $live.timeoutSeconds }}
            failureThreshold: {{ $live.failureThreshold }}
          lifecycle:
            preStop:
              exec:
                # Keep serving while endpoint controllers and proxies stop sending new requests here.
                command: ["sleep", "{{ $v.lifecycle.preStopSleepSeconds }}"]
          securityContext:
            {{- include "triton-classifier.containerSecurityContext" $root | nindent 12 }}
          resources:
            {{- $resources := deepCopy $v.resources }}
            {{- if gt (int $v.gpu.count) 0 }}
            {{- $limits := default (dict) $resources.limits }}
            {{- $_ := set $limits "nvidia.com/gpu" (int $v.gpu.count) }}
            {{- $_ := set $resources "limits" $limits }}
            {{- end }}
            {{- toYaml $resources | nindent 12 }}
          volumeMounts:
            - name: dshm
              mountPath: /dev/shm
            - name: tmp
              mountPath: /tmp
            {{- if $live.inference.enabled }}
            - name: liveness-probe
              mountPath: {{ $probeDir }}
              readOnly: true
            {{- end }}
            {{- if ne $repo.source "objectStore" }}
            - name: model-repository
              mountPath: {{ $repo.mountPath }}
              readOnly: true
              {{- if and (eq $repo.source "pvc") (not $staged) $repo.pvc.subPath }}
              subPath: {{ $repo.pvc.subPath }}
              {{- end }}
            {{- end }}
            {{- if and (eq $repo.source "objectStore") $repo.objectStore.gcsKeySecret }}
            - name: gcs-key
              mountPath: {{ $gcsKeyDir }}
              readOnly: true
            {{- end }}
            {{- if $tls.enabled }}
            - name: grpc-tls
              mountPath: {{ $tlsDir }}
              readOnly: true
            {{- end }}
            {{- with $v.extraVolumeMounts }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
        {{- range $v.sidecars }}
        {{- include "triton-classifier.extraContainer" (list $root .) | nindent 8 }}
        {{- end }}
      volumes:
        - name: dshm
          emptyDir:
            medium: Memory
            sizeLimit: {{ $v.shm.sizeLimit }}
        - name: tmp
          emptyDir:
            sizeLimit: {{ $v.tmp.sizeLimit }}
        {{- if $live.inference.enabled }}
        - name: liveness-probe
          configMap:
            name: {{ include "triton-classifier.suffixedName" (list $root "liveness-probe") }}
        {{- end }}
        {{- if $staged }}
        - name: model-repository
          emptyDir:
            sizeLimit: {{ $repo.staging.sizeLimit }}
        {{- if eq $repo.source "pvc" }}
        - name: model-source
          persistentVolumeClaim:
            claimName: {{ $repo.pvc.claimName }}
            readOnly: true
        {{- end }}
        {{- else if eq $repo.source "pvc" }}
        - name: model-repository
          persistentVolumeClaim:
            claimName: {{ $repo.pvc.claimName }}
            readOnly: true
        {{- end }}
        {{- if and (eq $repo.source "objectStore") $repo.objectStore.gcsKeySecret }}
        - name: gcs-key
          secret:
            secretName: {{ $repo.objectStore.gcsKeySecret }}
            defaultMode: 0440
        {{- end }}
        {{- if $tls.enabled }}
        - name: grpc-tls
          secret:
            secretName: {{ include "triton-classifier.grpcTlsSecretName" $root }}
            defaultMode: 0440
        {{- end }}
        {{- with $v.extraVolumes }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
{{- end }}
