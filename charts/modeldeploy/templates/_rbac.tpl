{{/*
The permissions the operator needs inside every namespace it watches. Used by the ClusterRole
(cluster mode) and by one Role per watched namespace (rbac.namespaced). No wildcards, and no
Secrets: the operator never reads them (model artifacts are fetched by the server pods).
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
# Read-only: pod readiness and the reasons a canary is not ready (image pull, crash loop).
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch"]
# Traffic splitting: the user's HTTPRoute; the operator only patches its backendRefs' weights.
- apiGroups: ["gateway.networking.k8s.io"]
  resources: ["httproutes"]
  verbs: ["get", "list", "watch", "patch", "update"]
# Events explaining every decision (kopf posts core/v1 Events).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
# The same Events through the events.k8s.io/v1 API.
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}
