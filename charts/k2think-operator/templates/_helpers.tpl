{{/* Chart name (nameOverride wins). */}}
{{- define "k2think-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: fullnameOverride, else release name (+ chart name unless it already contains it). */}}
{{- define "k2think-operator.fullname" -}}
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

{{- define "k2think-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels: stable for the lifetime of a release (Deployment selectors are immutable). */}}
{{- define "k2think-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "k2think-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of every object. */}}
{{- define "k2think-operator.labels" -}}
helm.sh/chart: {{ include "k2think-operator.chart" . }}
{{ include "k2think-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: k2think
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "k2think-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "k2think-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "k2think-operator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Refuse combinations the schema cannot express clearly. */}}
{{- define "k2think-operator.validate" -}}
{{- if and (eq .Values.rbac.scope "namespaced") (empty .Values.watchNamespaces) }}
{{- fail "rbac.scope=namespaced needs watchNamespaces (the namespaces that get a Role, and the only ones the operator watches)" }}
{{- end }}
{{- if and .Values.metrics.serviceMonitor.enabled (not .Values.metrics.service.enabled) }}
{{- fail "metrics.serviceMonitor.enabled needs metrics.service.enabled" }}
{{- end }}
{{- if and .Values.podDisruptionBudget.enabled (kindIs "invalid" .Values.podDisruptionBudget.minAvailable) (kindIs "invalid" .Values.podDisruptionBudget.maxUnavailable) }}
{{- fail "podDisruptionBudget: set minAvailable or maxUnavailable" }}
{{- end }}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.leaderElection.enabled) }}
{{- fail "replicaCount > 1 needs leaderElection.enabled (two operators without a lease would both write)" }}
{{- end }}
{{- if and .Values.leaderElection.enabled (le (int .Values.leaderElection.leaseDurationSeconds) (int .Values.leaderElection.renewDeadlineSeconds)) }}
{{- fail "leaderElection.renewDeadlineSeconds must be below leaseDurationSeconds" }}
{{- end }}
{{- end }}

{{/* Name of the leader-election Lease. */}}
{{- define "k2think-operator.leaseName" -}}
{{- default (include "k2think-operator.fullname" .) .Values.leaderElection.leaseName }}
{{- end }}

{{/*
Least privilege, derived from what the operator does (docs/install.md, "RBAC"):
  - K2ThinkDeployments: kopf lists/watches them and merge-patches metadata (its progress and
    diff-base annotations under k2think.dev/); the operator writes only the status subresource.
  - k2thinkdeployments/finalizers update: needed only where the OwnerReferencesPermissionEnforcement
    admission plugin runs (e.g. OpenShift), because the RayService's owner reference sets
    blockOwnerDeletion; CRDs serve no such subresource, so it grants nothing else.
  - RayServices: server-side apply (patch; create when the object is new), get, and the
    list/watch of kopf's index and event handler. Never delete: the garbage collector does that.
  - Pods: list/watch of the Ray pods (kopf index); create only with dryRunPods=true (off by
    default), for server-side dry runs of the Pods KubeRay will create (Pod validation and the
    admission policies checked before the RayService is applied). Off, no pod create is granted.
  - Events: kopf posts core/v1 Events (create only).
  No Secrets, ConfigMaps, Services or Nodes, and no delete verb anywhere.
*/}}
{{- define "k2think-operator.rules" -}}
- apiGroups: ["k2think.dev"]
  resources: ["k2thinkdeployments"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["k2think.dev"]
  resources: ["k2thinkdeployments/status"]
  verbs: ["patch"]
- apiGroups: ["k2think.dev"]
  resources: ["k2thinkdeployments/finalizers"]
  verbs: ["update"]
# The model cache: its status, the claim it may create and the fill Jobs (read back, never
# deleted: the fill Job removes old revisions itself).
- apiGroups: ["k2think.dev"]
  resources: ["k2thinkmodelcaches"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["k2think.dev"]
  resources: ["k2thinkmodelcaches/status"]
  verbs: ["patch"]
- apiGroups: ["k2think.dev"]
  resources: ["k2thinkmodelcaches/finalizers"]
  verbs: ["update"]
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create"]
- apiGroups: [""]
  resources: ["persistentvolumeclaims"]
  verbs: ["get", "create"]
- apiGroups: ["ray.io"]
  resources: ["rayservices"]
  verbs: ["get", "list", "watch", "create", "patch"]
# Spill-over (docs/autoscaling.md): read the live RayCluster and JSON-patch a full pool's worker
# group maxReplicas (never created or deleted: KubeRay owns it).
- apiGroups: ["ray.io"]
  resources: ["rayclusters"]
  verbs: ["get", "patch"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch"{{ if .Values.dryRunPods }}, "create"{{ end }}]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
# Security objects of each deployment (docs/security.md). Secrets: create only, never read: the
# Ray token Secret is created once (HTTP 409 when it exists) and never rewritten.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["create"]
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["create", "patch"]
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["create", "patch"]
# Kueue (spec.scheduling, docs/scheduling.md): read the RayService's Workloads and its LocalQueue
# for status; patch a Workload's spec.active for spec.suspend. Harmless without Kueue installed.
- apiGroups: ["kueue.x-k8s.io"]
  resources: ["workloads"]
  verbs: ["get", "list", "patch"]
- apiGroups: ["kueue.x-k8s.io"]
  resources: ["localqueues"]
  verbs: ["get"]
{{- end }}
