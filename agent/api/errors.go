package api

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
)

// Code is the kind of a failure: the server sends it next to the message
// ({"error": ..., "code": ...}) and the client acts on it, through the
// sentinels (errors.Is(err, api.ErrNotFound)) or the *Error's Code.
type Code string

// The codes of the local API. A code a newer agent sends and this client
// does not know is treated as CodeInternal.
const (
	CodeNotFound     Code = "not_found"
	CodeInvalid      Code = "invalid"
	CodeConflict     Code = "conflict"
	CodeUnavailable  Code = "unavailable"
	CodeNotSupported Code = "not_supported"
	CodePermission   Code = "permission_denied"
	CodeInternal     Code = "internal"
)

// codes pairs each code with its sentinel and HTTP status.
var codes = []struct {
	code     Code
	sentinel error
	status   int
}{
	{CodeNotFound, ErrNotFound, http.StatusNotFound},
	{CodeInvalid, ErrInvalid, http.StatusBadRequest},
	{CodeConflict, ErrConflict, http.StatusConflict},
	{CodeUnavailable, ErrUnavailable, http.StatusServiceUnavailable},
	{CodeNotSupported, ErrNotSupported, http.StatusNotImplemented},
	{CodePermission, ErrPermission, http.StatusForbidden},
	{CodeInternal, ErrInternal, http.StatusInternalServerError},
}

// Sentinel returns the sentinel error of the code (ErrInternal for an
// unknown one).
func (c Code) Sentinel() error {
	for _, x := range codes {
		if x.code == c {
			return x.sentinel
		}
	}
	return ErrInternal
}

// Status returns the HTTP status the server answers the code with.
func (c Code) Status() int {
	for _, x := range codes {
		if x.code == c {
			return x.status
		}
	}
	return http.StatusInternalServerError
}

// Error is a failure of the local API: what went wrong and what to do
// (Message, for the person running meshctl) and of which kind (Code, for
// programs). A backend returns one made with Errorf; the server sends its
// code and message; the client returns an *Error again, so errors.Is
// matches the code's sentinel on both sides of the socket. Its text is the
// message alone: the code travels on its own.
type Error struct {
	Code    Code
	Message string
	// Status is the HTTP status the client received; 0 on the server side.
	Status int
	// cause is what Errorf's %w verbs wrapped, for errors.Is and errors.As
	// on the server side; it does not cross the socket.
	cause error
}

// Errorf makes an *Error of the given code; like fmt.Errorf, %w keeps its
// operand (for errors.Is and errors.As) besides formatting it:
//
//	return api.Errorf(api.CodeNotFound, "no token %q (see `meshctl token list`)", id)
func Errorf(code Code, format string, args ...any) *Error {
	err := fmt.Errorf(format, args...)
	return &Error{Code: code, Message: err.Error(), cause: err}
}

func (e *Error) Error() string { return e.Message }

// Unwrap returns the code's sentinel and, on the server side, the cause.
func (e *Error) Unwrap() []error {
	if e.cause == nil {
		return []error{e.Code.Sentinel()}
	}
	return []error{e.Code.Sentinel(), e.cause}
}

// errorOf is the *Error the server sends for what a backend returned.
//
//   - an *Error (Errorf), possibly wrapped: its code, and the whole text
//     as the message, since context wrapped around it is for the user too
//     and an *Error's text holds no sentinel;
//   - fmt.Errorf("%w: ...", api.ErrNotFound), the form the agent's
//     backends have always used: the sentinel's code, and the text after
//     the sentinel's own words (the code says them);
//   - anything else: internal, with its text.
func errorOf(err error) *Error {
	var e *Error
	if errors.As(err, &e) {
		return &Error{Code: e.Code, Message: err.Error()}
	}
	for _, c := range codes {
		if errors.Is(err, c.sentinel) {
			return &Error{Code: c.code, Message: afterSentinel(err, c.sentinel)}
		}
	}
	return &Error{Code: CodeInternal, Message: err.Error()}
}

// afterSentinel is the message of fmt.Errorf("%w: message", sentinel).
// When the sentinel is not first (fmt.Errorf("adding x: %w", ...)), the
// whole text is the message.
func afterSentinel(err, sentinel error) string {
	msg := err.Error()
	if rest, ok := strings.CutPrefix(msg, sentinel.Error()+": "); ok {
		return rest
	}
	return msg
}
