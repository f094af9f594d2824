package controller

import (
	"errors"
	"time"

	ctrl "sigs.k8s.io/controller-runtime"
)

// StallingError means the user must act (fix the spec, create a Secret);
// the reconcile is not retried until the object (or a watched object it
// refers to) changes, or after RequeueAfter when that is set.
type StallingError struct {
	// Reason is the Stalled condition's reason.
	Reason string
	Err    error
	// RequeueAfter, when set, rechecks a stall whose cause is not watched
	// (a Secret, a bucket).
	RequeueAfter time.Duration
}

func (e *StallingError) Error() string { return e.Err.Error() }
func (e *StallingError) Unwrap() error { return e.Err }

// WaitingError means the controller waits for something that will happen
// without anyone acting (a Pod to start, a backoff to pass); the reconcile
// is requeued after RequeueAfter without counting as a failure.
type WaitingError struct {
	Reason       string
	RequeueAfter time.Duration
	Err          error
}

func (e *WaitingError) Error() string { return e.Err.Error() }
func (e *WaitingError) Unwrap() error { return e.Err }

// resultOf turns a step's error into what Reconcile returns: never both a
// RequeueAfter and an error, since controller-runtime ignores the result
// when the error is set.
func resultOf(err error) (ctrl.Result, error) {
	if err == nil {
		return ctrl.Result{}, nil
	}
	var stall *StallingError
	if errors.As(err, &stall) {
		return ctrl.Result{RequeueAfter: stall.RequeueAfter}, nil
	}
	var wait *WaitingError
	if errors.As(err, &wait) {
		return ctrl.Result{RequeueAfter: wait.RequeueAfter}, nil
	}
	return ctrl.Result{}, err
}
