{{/*
The permissions the operator needs inside every namespace it watches. Used by the ClusterRole
(cluster mode) and by one Role per watched namespace (rbac.namespaced). No wildcards, and Secrets
write-only: the operator never reads one here (model artifacts are fetched by the server pods; the
one Secret it reads, its shadow-step key, is granted by name in templates/shadow-key.yaml).
*/}}
{{- define "modeldeploy.namespacedRules" -}}
# Read every ModelDeployment it reconciles; patch/update them for kopf's bookkeeping annotation
# and finalizer, and to clear the promote/abort/retry annotations once consumed.
- apiGroups: ["modeldeploy.io"]
  resources: ["modeldeployments"]
  verbs: ["get", "list", "watch", "patch", "update"]
# Status is the rollout's memory: step, weights, analysis record, history.
- apiGroups: ["modeldeploy.io"]
  resources: ["modeldeployments/status"]
  verbs: ["get", "patch", "update"]
# Children carry ownerReferences with blockOwnerDeletion; clusters running the
# OwnerReferencesPermissionEnforcement admission plugin require update on the owner's finalizers.
- apiGroups: ["modeldeploy.io"]
  resources: ["modeldeployments/finalizers"]
  verbs: ["update"]
# One Deployment of the server per model revision (stable, canary): created, scaled, deleted.
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
# Scaling a revision's Deployment up or down (the replica-ratio canary, the old stable's scale-down).
- apiGroups: ["apps"]
  resources: ["deployments/scale"]
  verbs: ["get", "patch", "update"]
# The <name>, <name>-stable and <name>-canary Services in front of those Deployments.
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
# spec.batch: one CronJob per entry (created, re-rendered after a promotion, deleted with its entry);
# its Jobs are read for status.batch[] (the CronJob controller creates and deletes them).
- apiGroups: ["batch"]
  resources: ["cronjobs"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
# Read-only: the Jobs those CronJobs start, for status.batch[] (runs, outcome, duration).
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch"]
# Write-only: the <name>-shadow Secret holding each ModelDeployment's shadow-step token (server-side
# apply: create and patch). No get, list or watch: the operator cannot read any Secret.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["create", "patch"]
# spec.autoscaling: the stable revision's HorizontalPodAutoscaler (handed to the new stable on
# promotion, deleted when autoscaling is removed).
- apiGroups: ["autoscaling"]
  resources: ["horizontalpodautoscalers"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
# spec.autoscaling: the stable revision's PodDisruptionBudget (same life as the autoscaler).
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
# Read-only: pod readiness and the reasons a canary is not ready (image pull, crash loop); the
# termination messages of batch shards (their reports).
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch"]
# Traffic splitting: the user's HTTPRoute; the operator only patches its backendRefs' weights.
- apiGroups: ["gateway.networking.k8s.io"]
  resources: ["httproutes"]
  verbs: ["get", "list", "watch", "patch", "update"]
# Events explaining every decision (kopf posts core/v1 Events only; nothing here needs the
# events.k8s.io/v1 API).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}
