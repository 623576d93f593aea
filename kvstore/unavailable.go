package kvstore

import (
	"context"
	"errors"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// ErrUnavailable is wrapped by every error of a request etcd did not
// answer: no member reachable, or too few up for a quorum (an etcd cluster
// that lost a majority of its members answers nothing, or answers "no
// leader", and a bare "context deadline exceeded" tells a user nothing).
// The original error stays in the chain (errors.Is(err,
// context.DeadlineExceeded) still holds).
var ErrUnavailable = errors.New("kvstore: etcd unavailable")

// unavailableError keeps etcd's error and adds ErrUnavailable and what to
// do about it.
type unavailableError struct{ err error }

func (e *unavailableError) Error() string {
	return ErrUnavailable.Error() + " (no answer from a quorum of its members: a majority of them must be up and reachable; reads and writes fail until then, the datapath keeps its last state; check the etcd members and `meshctl status`): " + e.err.Error()
}
func (e *unavailableError) Unwrap() []error { return []error{ErrUnavailable, e.err} }

// IsUnavailable reports whether err is etcd not answering.
func IsUnavailable(err error) bool { return errors.Is(err, ErrUnavailable) }

// mapUnavailable wraps the errors that mean "etcd did not answer" in
// ErrUnavailable. A cancelled request (the caller gave up) is not one.
func mapUnavailable(err error) error {
	if err == nil || errors.Is(err, ErrUnavailable) || errors.Is(err, context.Canceled) {
		return err
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return &unavailableError{err: err}
	}
	code := status.Code(err)
	var ee rpctypes.EtcdError
	if errors.As(err, &ee) {
		code = ee.Code()
	}
	if code == codes.Unavailable || code == codes.DeadlineExceeded {
		return &unavailableError{err: err}
	}
	return err
}
