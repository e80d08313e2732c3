{{/*
The operator's RBAC rules: exactly interlace_operator.rbac.RULES (plus SHARED_ACCOUNT_RULES when
jobPolicy.allowedServiceAccounts is not empty), split by scope
(tests/packaging/test_chart.py fails when they differ and prints what to paste here).
namespacedRules: in the ClusterRole (cluster-wide) or in a Role per watched namespace.
clusterRules: cluster-scoped resources (read-only), always in a ClusterRole.
*/}}

{{- define "interlace-operator.namespacedRules" -}}
- apiGroups: ["interlace.dev"]
  resources: ["prunejobs"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["interlace.dev"]
  resources: ["prunejobs/status"]
  verbs: ["get", "patch"]
- apiGroups: ["interlace.dev"]
  resources: ["prunejobs/finalizers"]
  verbs: ["update"]
- apiGroups: ["ray.io"]
  resources: ["rayjobs"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["kueue.x-k8s.io"]
  resources: ["workloads"]
  verbs: ["list", "patch"]
- apiGroups: [""]
  resources: ["serviceaccounts"]
  verbs: ["get", "create"]
- apiGroups: ["rbac.authorization.k8s.io"]
  resources: ["roles", "rolebindings"]
  verbs: ["get", "create", "update"]
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["get", "create", "update"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "list"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list"]
{{- if (.Values.jobPolicy).allowedServiceAccounts }}
{{- /* interlace_operator.rbac.SHARED_ACCOUNT_RULES: the per-job token Secret for pods of a shared ServiceAccount */}}
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "create"]
{{- end }}
{{- end -}}

{{- define "interlace-operator.clusterRules" -}}
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["list", "watch"]
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["list", "watch"]
{{- end -}}
