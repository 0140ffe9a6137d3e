package helmhybrid

// The Helm reconciler acts with the operator's own identity: it needs the
// DataPlane kind (status and the uninstall finalizer), Helm's release
// storage (Secrets in the DataPlane's namespace) and every kind the
// couchestor-dataplane chart renders — nothing more.
//
// +kubebuilder:rbac:groups=storage.billyronks.io,resources=dataplanes,verbs=get;list;watch;update;patch
// +kubebuilder:rbac:groups=storage.billyronks.io,resources=dataplanes/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=storage.billyronks.io,resources=dataplanes/finalizers,verbs=update
// +kubebuilder:rbac:groups="",resources=secrets;services;configmaps,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups="",resources=serviceaccounts,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=rbac.authorization.k8s.io,resources=roles;rolebindings,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=apps,resources=statefulsets,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=storage.k8s.io,resources=storageclasses,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=monitoring.coreos.com,resources=servicemonitors;prometheusrules,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups="",resources=events,verbs=create;patch
