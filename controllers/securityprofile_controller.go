package controllers

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	toolscache "k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/driverpilot/driverpilot/agent/falco"
	v1alpha1 "github.com/driverpilot/driverpilot/api/v1alpha1"
	"github.com/driverpilot/driverpilot/config/knownissues"
	"github.com/driverpilot/driverpilot/internal/selection"
)

// Finalizer lets the manager remove its node conditions, taints and NodeSensors when a profile goes.
const Finalizer = "security.driverpilot.io/cleanup"

// SecurityProfileReconciler reconciles SecurityProfiles.
type SecurityProfileReconciler struct {
	client.Client
	Scheme   *runtime.Scheme
	Recorder events.EventRecorder
	// KnownIssues is the known-issue matrix the selection engine consults.
	KnownIssues []knownissues.Issue
	// HeartbeatTimeout is how old an agent's heartbeat may be before its node turns Unknown.
	HeartbeatTimeout time.Duration
	// Agent describes the agent DaemonSet the manager deploys per profile.
	Agent AgentConfig
	// AgentVersion is the agent version this manager deploys. A node verified by another version
	// keeps its verified state and re-verifies, paced like a first rollout, once the new agent
	// runs there. Empty turns re-verification on upgrade off.
	AgentVersion string
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// APIReader reads from the API server, not the cache: a retry after a conflict needs the
	// object as it is now. Nil means Client.
	APIReader client.Reader

	expect expectations
	// live is when the manager saw each node's agent heartbeat change (its own clock).
	live    liveness
	podSeen agentPodSightings
	// dsWritten is the generation of each agent DaemonSet as last written here.
	dsWritten generations
	replaced  replacements
	recent    recentWrites
	// statusWritten is when each profile's status was last written, by UID.
	statusWritten sync.Map
	// verifying remembers since when each node verifies its attempt (fleet.go's group gate).
	verifying verifyClock
	// nodeStore is the cache's Node store (SetupWithManager; listNodes reads it).
	nodeStore toolscache.Store
}

// +kubebuilder:rbac:groups=security.driverpilot.io,resources=securityprofiles,verbs=get;list;watch;update;patch
// +kubebuilder:rbac:groups=security.driverpilot.io,resources=securityprofiles/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=security.driverpilot.io,resources=securityprofiles/finalizers,verbs=update
// +kubebuilder:rbac:groups=security.driverpilot.io,resources=nodesensors,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups="",resources=nodes,verbs=get;list;watch;patch;update
// +kubebuilder:rbac:groups="",resources=nodes/status,verbs=get;patch
// +kubebuilder:rbac:groups=apps,resources=daemonsets,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch

// Reconcile brings one profile's nodes one step closer to verified.
func (r *SecurityProfileReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	profile := &v1alpha1.SecurityProfile{}
	if err := r.Get(ctx, req.NamespacedName, profile); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if !profile.DeletionTimestamp.IsZero() {
		return ctrl.Result{}, r.finalize(ctx, profile)
	}
	if controllerutil.AddFinalizer(profile, Finalizer) {
		if err := r.Update(ctx, profile); err != nil {
			return ctrl.Result{}, fmt.Errorf("add finalizer: %w", err)
		}
	}
	if err := validateSpec(profile); err != nil {
		// Nothing is decided for an unusable profile, but its nodes' conditions keep saying
		// what is true of them now.
		wait, err := r.writeStatus(ctx, profile, invalidSpecStatus(profile, err))
		next, kerr := r.keepNodesTrue(ctx, profile)
		if next > 0 && (wait == 0 || next < wait) {
			wait = next
		}
		if err = errors.Join(err, kerr); err != nil && onlyConflicts(err) {
			return ctrl.Result{RequeueAfter: 100 * time.Millisecond}, nil
		}
		return ctrl.Result{RequeueAfter: wait}, err
	}

	// From here a failure on one node is recorded on that node and the others move on: each
	// step joins its per-node errors, and the pass ends with the status written.
	ctx, events := withEventBatch(ctx)
	defer r.flushEvents(events, profile)
	selected, lost, err := r.selectNodes(ctx, profile)
	if err != nil {
		return ctrl.Result{}, err
	}
	var errs []error
	if err := r.ensureAgentDaemonSet(ctx, profile); err != nil {
		errs = append(errs, err)
	}
	sensors, missing, pending, err := r.syncNodeSensors(ctx, profile, selected)
	errs = append(errs, err)
	renewed, err := r.leaseRenewals(ctx)
	if err != nil {
		// Without the Leases a quiet agent looks silent: no pass on stale heartbeats.
		return ctrl.Result{}, errors.Join(append(errs, err)...)
	}
	now := r.now()
	r.withObservedHeartbeats(sensors, renewed, now)
	progress, err := r.advance(ctx, profile, selected, sensors, missing, pending, now)
	if errors.Is(err, errStaleCache) {
		return ctrl.Result{RequeueAfter: 100 * time.Millisecond}, nil
	}
	errs = append(errs, err)
	errs = append(errs, r.syncNodes(ctx, profile, selected, sensors, progress, now))
	errs = append(errs, r.syncFleetGroups(ctx, profile, progress.fleet))
	moreToCreate, err := r.createNodeSensors(ctx, profile, selected, progress.create)
	errs = append(errs, err)
	statusWait, err := r.writeStatus(ctx, profile, buildStatus(profile, progress, lost))
	errs = append(errs, err)
	if err := errors.Join(errs...); err != nil {
		if onlyConflicts(err) {
			// A read was stale (a NodeSensor, a node or the profile moved on): go again, quietly.
			return ctrl.Result{RequeueAfter: 100 * time.Millisecond}, nil
		}
		return ctrl.Result{}, err
	}
	if moreToCreate {
		return ctrl.Result{RequeueAfter: time.Millisecond}, nil
	}
	next := r.nextHeartbeatDeadline(sensors, now)
	if statusWait > 0 && (next == 0 || statusWait < next) {
		next = statusWait
	}
	return ctrl.Result{RequeueAfter: next}, nil
}

// onlyConflicts reports whether every error joined in err is an optimistic-lock conflict.
func onlyConflicts(err error) bool {
	if joined, ok := err.(interface{ Unwrap() []error }); ok {
		for _, e := range joined.Unwrap() {
			if !onlyConflicts(e) {
				return false
			}
		}
		return true
	}
	return apierrors.IsConflict(err)
}

func (r *SecurityProfileReconciler) reader() client.Reader {
	if r.APIReader != nil {
		return r.APIReader
	}
	return r.Client
}

// validateSpec checks what the API server could not: the override regexps and, for Falco, a
// version DriverPilot can configure.
func validateSpec(profile *v1alpha1.SecurityProfile) error {
	if _, err := nodeSelector(profile); err != nil {
		return err
	}
	if c := profile.Spec.Rollout.Canary; c != nil && c.NodeSelector != nil {
		if _, err := metav1.LabelSelectorAsSelector(c.NodeSelector); err != nil {
			return fmt.Errorf("spec.rollout.canary.nodeSelector: %w", err)
		}
	}
	if err := selection.ValidatePolicy(profile.Spec.Drivers); err != nil {
		return err
	}
	if profile.Spec.Sensor.Kind == v1alpha1.SensorFalco {
		if v, ok := selection.FalcoVersion(profile.Spec.Sensor); ok {
			if err := falco.Offers(&v, ""); err != nil {
				return fmt.Errorf("spec.sensor: %w; use a Falco image 0.38.0 or later", err)
			}
		}
	}
	return nil
}

func (r *SecurityProfileReconciler) now() time.Time {
	if r.Now != nil {
		return r.Now()
	}
	return time.Now()
}

// nextHeartbeatDeadline is when the earliest heartbeat expires, so the node turns Unknown on
// time, or a silent node's taint grace ends (silentForTaint); for an agent that never reported,
// when it counts as silent (a silent canary pauses).
func (r *SecurityProfileReconciler) nextHeartbeatDeadline(sensors map[string]*v1alpha1.NodeSensor, now time.Time) time.Duration {
	var next time.Duration
	for _, ns := range sensors {
		since := ns.CreationTimestamp
		if hb := ns.Status.HeartbeatTime; hb != nil {
			since = *hb
		}
		for _, after := range []time.Duration{r.HeartbeatTimeout, 2 * r.HeartbeatTimeout} {
			left := since.Add(after).Sub(now) + time.Second
			if left > 0 && (next == 0 || left < next) {
				next = left
			}
		}
	}
	return next
}

// finalize removes what the profile put on nodes, its NodeSensors and its agent DaemonSet.
func (r *SecurityProfileReconciler) finalize(ctx context.Context, profile *v1alpha1.SecurityProfile) error {
	if !controllerutil.ContainsFinalizer(profile, Finalizer) {
		return nil
	}
	var list v1alpha1.NodeSensorList
	if err := r.List(ctx, &list); err != nil {
		return fmt.Errorf("list node sensors: %w", err)
	}
	// One node that cannot be released does not keep the others tainted: release every node,
	// then keep the finalizer (and retry) while any failed.
	var errs []error
	for i := range list.Items {
		ns := &list.Items[i]
		if ns.Spec.Profile != profile.Name {
			continue
		}
		if err := r.release(ctx, profile, ns); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	if err := r.deleteFleetGroups(ctx, profile); err != nil {
		return err
	}
	ds := &appsv1.DaemonSet{}
	ds.Namespace, ds.Name = r.Agent.Namespace, agentDaemonSetName(profile)
	if err := r.Delete(ctx, ds); client.IgnoreNotFound(err) != nil {
		return fmt.Errorf("delete agent daemonset: %w", err)
	}
	r.dsWritten.forget(ds.Name)
	r.statusWritten.Delete(profile.UID)
	controllerutil.RemoveFinalizer(profile, Finalizer)
	if err := r.Update(ctx, profile); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("remove finalizer: %w", err)
	}
	log.FromContext(ctx).Info("Profile deleted: node conditions, taints and node sensors removed")
	return nil
}

// releaseNode removes DriverPilot's condition and taint from a node that no profile governs now.
func (r *SecurityProfileReconciler) releaseNode(ctx context.Context, nodeName string) error {
	node := &corev1.Node{}
	if err := r.Get(ctx, client.ObjectKey{Name: nodeName}, node); err != nil {
		return client.IgnoreNotFound(err)
	}
	if err := removeNodeCondition(ctx, r.Client, node); err != nil {
		return err
	}
	return setTaint(ctx, r.Client, r.reader(), node, false)
}
