package join

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
	Code  Code   `json:"code"`
}
