package helmhybrid

// The Helm reconciler acts with the operator's own identity: it needs the
// DataPlane kind (status and the uninstall finalizer), Helm's release
// storage (Secrets in the DataPlane's namespace) and every kind the
// couchestor-dataplane chart renders — nothing more, and only in the
// data-plane namespaces. The namespaced rules below land in the generated
// Role (namespace couchestor-system stands for the operator's namespace);
// the install chart renders that Role into every namespace of its
// dataPlaneNamespaces value as well, and the operator refuses DataPlanes
// elsewhere (Policy.Namespaces). Leases are here because the chart gives the
// shard servers a Role on them, and RBAC lets the operator grant only what
// it holds. StorageClasses are cluster-scoped (one per MayastorVolume shard
// server): the one cluster-wide write grant, in the documented allow-list
// (tests/integration/packaging).
//
// +kubebuilder:rbac:groups=storage.billyronks.io,resources=dataplanes,verbs=get;list;watch;update;patch
// +kubebuilder:rbac:groups=storage.billyronks.io,resources=dataplanes/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=storage.billyronks.io,resources=dataplanes/finalizers,verbs=update
// +kubebuilder:rbac:groups="",namespace=couchestor-system,resources=secrets;services;configmaps;serviceaccounts,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=rbac.authorization.k8s.io,namespace=couchestor-system,resources=roles;rolebindings,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=apps,namespace=couchestor-system,resources=statefulsets,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=networking.k8s.io,namespace=couchestor-system,resources=networkpolicies,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=monitoring.coreos.com,namespace=couchestor-system,resources=servicemonitors;prometheusrules,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=coordination.k8s.io,namespace=couchestor-system,resources=leases,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=storage.k8s.io,resources=storageclasses,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups="",resources=events,verbs=create;patch
