package join

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
)

// Errors of a join, one per Code. Every error Join returns for a refusal
// or failure is an *Error that errors.Is matches against one of them.
var (
	ErrTokenUnknown = errors.New("join: unknown join token")
	ErrTokenExpired = errors.New("join: join token expired")
	ErrTokenRevoked = errors.New("join: join token revoked")
	ErrTokenUsedUp  = errors.New("join: join token used up")
	// ErrInvalidRequest: the node's name, labels or CSR were refused.
	ErrInvalidRequest = errors.New("join: invalid join request")
	// ErrWrongCA: the service is not signed by the CA the token pins.
	ErrWrongCA = errors.New("join: the join service's certificate is not from the mesh CA the token pins")
	// ErrForbidden: a node service refused the caller (no node
	// certificate, or a request outside what its node may ask).
	ErrForbidden = errors.New("join: not allowed for this node")
	// ErrRevoked: an admin revoked the node ('meshctl node revoke'): its
	// certificate is refused and its name cannot join until cleared.
	ErrRevoked = errors.New("join: the node was revoked")
	// ErrService: the service failed or answered something unexpected.
	ErrService = errors.New("join: join service error")
)

// Code is the kind of a join failure. The service sends it next to the
// message; the client turns it back into an *Error of the same code.
type Code string

// The codes. CodeWrongCA never crosses the wire (the client finds it
// before it sends anything); a code the client does not know is
// CodeService.
const (
	CodeTokenUnknown Code = "token_unknown"
	CodeTokenExpired Code = "token_expired"
	CodeTokenRevoked Code = "token_revoked"
	CodeTokenUsedUp  Code = "token_used_up"
	CodeInvalid      Code = "invalid"
	CodeForbidden    Code = "forbidden"
	CodeRevoked      Code = "revoked"
	CodeWrongCA      Code = "wrong_ca"
	CodeService      Code = "internal"
)

// codes pairs each code with its sentinel and HTTP status; hint is the
// message when a token store says no more than which refusal it is (an
// unknown token is answered with no detail, so as not to confirm which
// ids exist).
var codes = []struct {
	code     Code
	sentinel error
	status   int
	hint     string
}{
	{CodeTokenUnknown, ErrTokenUnknown, http.StatusUnauthorized, "this mesh does not know the token: check it was copied whole, or make a new one with 'meshctl token create'"},
	{CodeTokenExpired, ErrTokenExpired, http.StatusForbidden, "make a new one with 'meshctl token create'"},
	{CodeTokenRevoked, ErrTokenRevoked, http.StatusForbidden, "make a new one with 'meshctl token create'"},
	{CodeTokenUsedUp, ErrTokenUsedUp, http.StatusForbidden, "make a new one with 'meshctl token create' (--reusable --max-uses N for several machines)"},
	{CodeInvalid, ErrInvalidRequest, http.StatusBadRequest, "the join request was refused"},
	{CodeForbidden, ErrForbidden, http.StatusForbidden, "not allowed for this node"},
	{CodeRevoked, ErrRevoked, http.StatusForbidden, "an admin revoked this node: reinstall it and join with a new token once the revocation is cleared ('meshctl node revoke --clear NAME' on the first node)"},
	{CodeWrongCA, ErrWrongCA, http.StatusInternalServerError, ""},
	{CodeService, ErrService, http.StatusInternalServerError, ""},
}

func (c Code) entry() int {
	for i, x := range codes {
		if x.code == c {
			return i
		}
	}
	return len(codes) - 1 // CodeService
}

// Sentinel returns the code's sentinel (ErrService for an unknown code).
func (c Code) Sentinel() error { return codes[c.entry()].sentinel }

// Error is a refused or failed join: Code says which (errors.Is matches
// its sentinel), Message what the person joining is told (which token,
// why, what to do) without the sentinel's words, which Error() puts in
// front: "join: join token expired: token t1 expired at ...".
type Error struct {
	Code    Code
	Message string
	// cause is what Errorf's %w verbs wrapped; it does not cross the wire.
	cause error
}

// Errorf makes an *Error of the given code; like fmt.Errorf, %w keeps its
// operand for errors.Is and errors.As besides formatting it. A TokenStore
// refuses a token with one:
//
//	return join.Grant{}, join.Errorf(join.CodeTokenExpired, "token %s expired at %s; ask for a new one", id, at)
func Errorf(code Code, format string, args ...any) *Error {
	err := fmt.Errorf(format, args...)
	return &Error{Code: code, Message: err.Error(), cause: err}
}

func (e *Error) Error() string {
	if e.Message == "" {
		return e.Code.Sentinel().Error()
	}
	return e.Code.Sentinel().Error() + ": " + e.Message
}

// Unwrap returns the code's sentinel and the cause, if any.
func (e *Error) Unwrap() []error {
	if e.cause == nil {
		return []error{e.Code.Sentinel()}
	}
	return []error{e.Code.Sentinel(), e.cause}
}

// TokenStoreError maps a token store's refusal onto the join service's
// errors, so the store's own sentinels stay its own: codes pairs each of
// them with the code to send. The message is the store's Detail() when
// its error has that method (kvstore.TokenError does: which token, why,
// what to do, without its sentinel's words); without one the service
// answers with the code's hint. An error that matches none of codes is a
// failure of the store and comes back as it is.
//
// The agent's TokenStore over kvstore is then
//
//	t, err := kv.ConsumeToken(ctx, id, secret, now)
//	if err != nil {
//		return join.Grant{}, join.TokenStoreError(err, map[error]join.Code{
//			kvstore.ErrTokenUnknown: join.CodeTokenUnknown, ...})
//	}
func TokenStoreError(err error, codes map[error]Code) error {
	for sentinel, code := range codes {
		if !errors.Is(err, sentinel) {
			continue
		}
		e := &Error{Code: code, cause: err}
		var d interface{ Detail() string }
		if errors.As(err, &d) {
			e.Message = d.Detail()
		}
		return e
	}
	return err
}

// errorOf is the *Error the service answers err with: an *Error as it
// is; a TokenStore's fmt.Errorf("%w: message", join.ErrTokenExpired)
// with that sentinel's code and the message after it; anything else is a
// service failure.
func errorOf(err error) *Error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	for _, c := range codes {
		if errors.Is(err, c.sentinel) {
			return &Error{Code: c.code, Message: afterSentinel(err.Error(), c.sentinel), cause: err}
		}
	}
	return &Error{Code: CodeService, Message: err.Error(), cause: err}
}

// afterSentinel is what a "%w: message" error says beyond its sentinel; a
// message that is nothing but the sentinel's words is no message.
func afterSentinel(msg string, sentinel error) string {
	full := sentinel.Error()
	msg = strings.TrimPrefix(msg, full+": ")
	if msg == full {
		return ""
	}
	return msg
}
