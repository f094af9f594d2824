package controller

import (
	"context"
	"encoding/json"
	"fmt"

	jsonpatch "gopkg.in/evanphx/json-patch.v4"
	"k8s.io/apimachinery/pkg/types"
	kerrors "k8s.io/apimachinery/pkg/util/errors"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
)

// statusPatcher remembers an object's status when the reconcile starts and
// patches only the difference when it ends: a JSON merge patch of the
// status stanza, so concurrent changes to spec or metadata are never
// overwritten and an unchanged status costs no API call.
type statusPatcher struct {
	c      client.Client
	before []byte
}

type statusOf func(client.Object) any

func newStatusPatcher(c client.Client, obj client.Object, status statusOf) (*statusPatcher, error) {
	b, err := json.Marshal(map[string]any{"status": status(obj)})
	if err != nil {
		return nil, err
	}
	return &statusPatcher{c: c, before: b}, nil
}

func (p *statusPatcher) patch(ctx context.Context, obj client.Object, status statusOf) error {
	after, err := json.Marshal(map[string]any{"status": status(obj)})
	if err != nil {
		return err
	}
	patch, err := jsonpatch.CreateMergePatch(p.before, after)
	if err != nil {
		return fmt.Errorf("computing status patch: %w", err)
	}
	if string(patch) == "{}" {
		return nil
	}
	if err := p.c.Status().Patch(ctx, obj, client.RawPatch(types.MergePatchType, patch)); err != nil {
		return client.IgnoreNotFound(err)
	}
	p.before = after
	return nil
}

// addFinalizer adds finalizer to obj with a merge patch, unless it is there.
func addFinalizer(ctx context.Context, c client.Client, obj client.Object, finalizer string) error {
	if controllerutil.ContainsFinalizer(obj, finalizer) {
		return nil
	}
	base := obj.DeepCopyObject().(client.Object)
	controllerutil.AddFinalizer(obj, finalizer)
	if err := c.Patch(ctx, obj, client.MergeFromWithOptions(base, client.MergeFromWithOptimisticLock{})); err != nil {
		return fmt.Errorf("adding finalizer: %w", err)
	}
	return nil
}

// removeFinalizer removes finalizer from obj with a merge patch.
func removeFinalizer(ctx context.Context, c client.Client, obj client.Object, finalizer string) error {
	if !controllerutil.ContainsFinalizer(obj, finalizer) {
		return nil
	}
	base := obj.DeepCopyObject().(client.Object)
	controllerutil.RemoveFinalizer(obj, finalizer)
	if err := c.Patch(ctx, obj, client.MergeFromWithOptions(base, client.MergeFromWithOptimisticLock{})); err != nil {
		return client.IgnoreNotFound(err)
	}
	return nil
}

// statusScope is what both reconcilers set up after reading their object:
// a status patcher, and the conditions it started from (for events).
type statusScope struct {
	obj     conditionsObject
	status  statusOf
	patcher *statusPatcher
	before  transitions
	rec     events.EventRecorder
}

func newStatusScope(c client.Client, rec events.EventRecorder, obj conditionsObject, status statusOf) (*statusScope, error) {
	p, err := newStatusPatcher(c, obj, status)
	if err != nil {
		return nil, err
	}
	return &statusScope{obj: obj, status: status, patcher: p, before: snapshotTransitions(obj), rec: rec}, nil
}

// close is deferred by Reconcile: a retried error shows in Ready, every
// Ready/Stalled transition becomes an event, status is patched, and a
// RequeueAfter never goes out together with an error.
func (s *statusScope) close(ctx context.Context, res *ctrl.Result, retErr *error) {
	if *retErr != nil {
		markReconcileError(s.obj, *retErr)
	}
	emitTransitions(s.rec, s.obj, s.before)
	*retErr = kerrors.NewAggregate([]error{*retErr, s.patcher.patch(ctx, s.obj, s.status)})
	if *retErr != nil {
		*res = ctrl.Result{}
	}
}
