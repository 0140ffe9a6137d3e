package migration

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/log"

	storagev1 "github.com/billyronks/couchestor/apis/storage/v1"
	"github.com/billyronks/couchestor/pkg/tiering"
)

// PolicyStarter turns the StoragePolicy controller's Move decisions into
// Engine.Migrate calls (it implements the controller's MigrationStarter). It
// reads each PV's CSI volume handle (the MayastorVolume name) and the
// policy's pool selector, limit and timeout.
type PolicyStarter struct {
	Engine *Engine

	mu       sync.Mutex
	lastSkip map[string]string // PV -> last reason logged, to log changes only
}

// StartMigrations starts what it can and returns at once; a decision that
// cannot start now (limit reached, already migrating, skipped) is left for the
// next evaluation.
func (s *PolicyStarter) StartMigrations(ctx context.Context, pol *storagev1.StoragePolicy, moves []tiering.Decision) {
	logger := log.FromContext(ctx).WithValues("policy", pol.Name)
	spec := pol.Spec.DeepCopy()
	storagev1.DefaultStoragePolicySpec(spec)
	timeout, err := storagev1.ParseDuration(spec.MigrationTimeout)
	if err != nil {
		logger.Error(err, "spec.migrationTimeout unreadable; nothing started", "value", spec.MigrationTimeout)
		return
	}
	cooldown, err := storagev1.ParseDuration(spec.CooldownPeriod)
	if err != nil {
		logger.Error(err, "spec.cooldownPeriod unreadable; nothing started", "value", spec.CooldownPeriod)
		return
	}
	for _, d := range moves {
		if d.Action != tiering.Move {
			continue
		}
		req, err := s.request(ctx, pol.Name, spec, d, timeout, cooldown)
		if err == nil {
			err = s.Engine.Migrate(ctx, req)
		}
		switch {
		case err == nil:
			s.noteSkip(d.Volume, "")
		case errors.Is(err, ErrAtCapacity):
			logger.V(1).Info("migration waits for a free slot", "pv", d.Volume, "reason", err.Error())
			return // the rest waits for the next evaluation
		case errors.Is(err, ErrAlreadyActive), errors.Is(err, ErrNotRunning):
			logger.V(1).Info("migration not started now", "pv", d.Volume, "reason", err.Error())
		default:
			if s.noteSkip(d.Volume, err.Error()) {
				logger.Info("migration not started", "pv", d.Volume, "reason", err.Error())
				s.skipEvent(ctx, pol, d.Volume, err)
			}
		}
	}
}

func (s *PolicyStarter) request(ctx context.Context, policy string, spec *storagev1.StoragePolicySpec, d tiering.Decision, timeout, cooldown time.Duration) (Request, error) {
	var pv corev1.PersistentVolume
	if err := s.Engine.o.Client.Get(ctx, types.NamespacedName{Name: d.Volume}, &pv); err != nil {
		return Request{}, fmt.Errorf("get PV %s: %w", d.Volume, err)
	}
	if pv.Spec.CSI == nil || pv.Spec.CSI.VolumeHandle == "" {
		return Request{}, fmt.Errorf("PV %s has no CSI volume handle", d.Volume)
	}
	var sel *metav1.LabelSelector
	switch d.To {
	case tiering.Hot:
		sel = spec.HotPoolSelector
	case tiering.Warm:
		sel = spec.WarmPoolSelector
	case tiering.Cold:
		sel = spec.ColdPoolSelector
	}
	return Request{
		Policy: policy, MaxConcurrent: *spec.MaxConcurrentMigrations, PVName: d.Volume, VolumeID: pv.Spec.CSI.VolumeHandle,
		FromTier: string(d.From), ToTier: string(d.To), TargetPools: sel, TriggerIOPS: d.IOPS, Timeout: timeout, Cooldown: cooldown,
	}, nil
}

// skipEvent tells the user, on the PV and the policy, why a move the policy
// decided was skipped (an unpublished volume, a nexus-local replica, ...):
// a reason only in the operator's log is one nobody reads. Once per change of
// reason, as the log line.
func (s *PolicyStarter) skipEvent(ctx context.Context, pol *storagev1.StoragePolicy, pvName string, err error) {
	var skip *SkipError
	if s.Engine.o.Recorder == nil || !errors.As(err, &skip) {
		return
	}
	msg := fmt.Sprintf("PV %s: %s", pvName, err.Error())
	var pv corev1.PersistentVolume
	if gerr := s.Engine.o.Client.Get(ctx, types.NamespacedName{Name: pvName}, &pv); gerr == nil {
		s.Engine.o.Recorder.Event(&pv, corev1.EventTypeWarning, "MigrationSkipped", msg)
	}
	s.Engine.o.Recorder.Event(pol, corev1.EventTypeWarning, "MigrationSkipped", msg)
}

func (s *PolicyStarter) noteSkip(pv, reason string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.lastSkip == nil {
		s.lastSkip = map[string]string{}
	}
	changed := s.lastSkip[pv] != reason
	if reason == "" {
		delete(s.lastSkip, pv)
	} else {
		s.lastSkip[pv] = reason
	}
	return changed
}
