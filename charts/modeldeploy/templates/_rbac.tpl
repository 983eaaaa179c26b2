{{/*
The permissions the operator needs inside every namespace it watches. Used by the ClusterRole
(cluster mode) and by one Role per watched namespace (rbac.namespaced). No wildcards, and Secrets
write-only: the operator never reads one here (model artifacts are fetched by the server pods; the
one Secret it reads, its shadow-step key, is granted by name in templates/shadow-key.yaml). Only the
verbs the operator and kopf issue: children are written by server-side apply (PATCH; create when the
object is new) or merge patch, read from list-and-watch caches or lists, and never updated (PUT).
*/}}
{{- define "modeldeploy.namespacedRules" -}}
# Read every ModelDeployment it reconciles (kopf's watch, the cache, a fresh read before a
# decision); patch them for kopf's bookkeeping annotation and finalizer, and to clear the
# promote/abort/retry annotations once consumed.
- apiGroups: ["modeldeploy.io"]
  resources: ["modeldeployments"]
  verbs: ["get", "list", "watch", "patch"]
# Status is the rollout's memory: step, weights, analysis record, history (merge patches with a
# resourceVersion precondition).
- apiGroups: ["modeldeploy.io"]
  resources: ["modeldeployments/status"]
  verbs: ["patch"]
# Children carry ownerReferences with blockOwnerDeletion; clusters running the
# OwnerReferencesPermissionEnforcement admission plugin require update on the owner's finalizers.
- apiGroups: ["modeldeploy.io"]
  resources: ["modeldeployments/finalizers"]
  verbs: ["update"]
# One Deployment of the server per model revision (stable, canary): created, scaled, deleted.
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["list", "watch", "create", "patch", "delete"]
# Scaling a revision's Deployment up or down (the replica-ratio canary, the old stable's scale-down).
- apiGroups: ["apps"]
  resources: ["deployments/scale"]
  verbs: ["patch"]
# The <name>, <name>-stable and <name>-canary Services in front of those Deployments (deleted with
# the ModelDeployment by the garbage collector, through their ownerReferences).
- apiGroups: [""]
  resources: ["services"]
  verbs: ["list", "watch", "create", "patch"]
# spec.batch: one CronJob per entry (created, re-rendered after a promotion, deleted with its entry);
# its Jobs are read for status.batch[] (the CronJob controller creates and deletes them).
- apiGroups: ["batch"]
  resources: ["cronjobs"]
  verbs: ["list", "create", "patch", "delete"]
# Read-only: the Jobs those CronJobs start, for status.batch[] (runs, outcome, duration).
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["list"]
# Write-only: the <name>-shadow Secret holding each ModelDeployment's shadow-step token (server-side
# apply: create and patch). No get, list or watch: the operator cannot read any Secret.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["create", "patch"]
# spec.autoscaling: the stable revision's HorizontalPodAutoscaler (handed to the new stable on
# promotion, deleted when autoscaling is removed).
- apiGroups: ["autoscaling"]
  resources: ["horizontalpodautoscalers"]
  verbs: ["create", "patch", "delete"]
# spec.autoscaling: the stable revision's PodDisruptionBudget (same life as the autoscaler).
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["create", "patch", "delete"]
# Read-only: pod readiness and the reasons a canary is not ready (image pull, crash loop); the
# termination messages of batch shards (their reports).
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch"]
# Traffic splitting: the user's HTTPRoute; the operator only patches its backendRefs' weights.
- apiGroups: ["gateway.networking.k8s.io"]
  resources: ["httproutes"]
  verbs: ["get", "list", "watch", "patch"]
# Events explaining every decision (kopf posts each core/v1 Event once, a create; nothing here
# needs the events.k8s.io/v1 API).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end }}
