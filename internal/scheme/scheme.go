// Package scheme builds the runtime.Scheme every CoucheStor process uses: the
// Kubernetes built-ins, CoucheStor's own API and the Mayastor kinds it reads.
package scheme

import (
	"k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"

	dataplanev1alpha1 "github.com/billyronks/couchestor/apis/dataplane/v1alpha1"
	mayastorv1alpha1 "github.com/billyronks/couchestor/apis/mayastor/v1alpha1"
	mayastorv1beta2 "github.com/billyronks/couchestor/apis/mayastor/v1beta2"
	mayastorv1beta3 "github.com/billyronks/couchestor/apis/mayastor/v1beta3"
	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
	storagev1alpha1 "github.com/billyronks/couchestor/apis/storage/v1alpha1"
)

// New returns a scheme with every kind CoucheStor reads or writes.
func New() *runtime.Scheme {
	s := runtime.NewScheme()
	utilruntime.Must(clientgoscheme.AddToScheme(s))
	utilruntime.Must(storagev1.AddToScheme(s))
	utilruntime.Must(storagev1alpha1.AddToScheme(s))
	utilruntime.Must(dataplanev1alpha1.AddToScheme(s))
	utilruntime.Must(mayastorv1beta2.AddToScheme(s))
	utilruntime.Must(mayastorv1beta3.AddToScheme(s))
	utilruntime.Must(mayastorv1alpha1.AddToScheme(s))
	return s
}
