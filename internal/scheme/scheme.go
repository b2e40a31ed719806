// Package scheme builds the runtime scheme DriverPilot's clients use: the built-in kinds and
// the security.driverpilot.io kinds.
package scheme

import (
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"

	v1alpha1 "github.com/driverpilot/driverpilot/api/v1alpha1"
)

// New returns a scheme with the built-in kinds and DriverPilot's kinds.
func New() *runtime.Scheme {
	s := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(s); err != nil {
		panic(err) // static registration: cannot fail at run time
	}
	if err := v1alpha1.AddToScheme(s); err != nil {
		panic(err)
	}
	return s
}
