package join

import (
	"errors"
	"net/http"
)

// Errors of a join. The four token errors are what a TokenStore returns
// (wrapped, with a message for the user); the client gets the same
// sentinels back from the service.
var (
	ErrTokenUnknown = errors.New("join: unknown join token")
	ErrTokenExpired = errors.New("join: join token expired")
	ErrTokenRevoked = errors.New("join: join token revoked")
	ErrTokenUsedUp  = errors.New("join: join token used up")
	// ErrInvalidRequest: the node's name, labels or CSR were refused.
	ErrInvalidRequest = errors.New("join: invalid join request")
	// ErrWrongCA: the service is not signed by the CA the token pins.
	ErrWrongCA = errors.New("join: the join service's certificate is not from the mesh CA the token pins")
	// ErrService: the service failed or answered something unexpected.
	ErrService = errors.New("join: join service error")
)

// joinPath is the service's only route.
const joinPath = "/v1/join"

// request is the body of POST /v1/join.
type request struct {
	TokenID  string            `json:"tokenID"`
	Secret   string            `json:"secret"`
	NodeName string            `json:"nodeName"`
	Labels   map[string]string `json:"labels,omitempty"`
	// CSR is a PEM certificate request for the node's own key.
	CSR string `json:"csr"`
}

// response is the answer to a successful join.
type response struct {
	NodeName string            `json:"nodeName"`
	Cluster  string            `json:"cluster"`
	Labels   map[string]string `json:"labels,omitempty"`
	// Overridden lists requested labels the token's labels replaced.
	Overridden    []string `json:"overridden,omitempty"`
	CACert        string   `json:"caCert"`
	Cert          string   `json:"cert"`
	EtcdEndpoints []string `json:"etcdEndpoints"`
}

type errorBody struct {
	Error string `json:"error"`
	Code  string `json:"code"`
}

// errorCodes maps errors to statuses and wire codes; hint is the message
// when a store gave no more than the sentinel.
var errorCodes = []struct {
	err    error
	status int
	code   string
	hint   string
}{
	{ErrTokenUnknown, http.StatusUnauthorized, "token_unknown", "this mesh does not know the token: check it was copied whole, or make a new one with 'meshctl token create'"},
	{ErrTokenExpired, http.StatusForbidden, "token_expired", "make a new one with 'meshctl token create'"},
	{ErrTokenRevoked, http.StatusForbidden, "token_revoked", "make a new one with 'meshctl token create'"},
	{ErrTokenUsedUp, http.StatusForbidden, "token_used_up", "make a new one with 'meshctl token create' (--reusable --max-uses N for several machines)"},
	{ErrInvalidRequest, http.StatusBadRequest, "invalid", "the join request was refused"},
}
