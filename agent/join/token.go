package join

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"regexp"
	"strconv"
	"strings"

	"github.com/weftmesh/weft/internal/names"
)

// TokenPrefix starts every join token; the digit is the format version.
const TokenPrefix = "weft1."

// maxTokenLen bounds what the parser looks at: a real token is ~250 bytes.
const maxTokenLen = 1024

// ErrMalformedToken is wrapped by every ParseToken error.
var ErrMalformedToken = errors.New("join: malformed join token")

// Token is what `meshctl join` needs to reach the join service safely:
// where it is, which token to present, and which CA must have signed the
// service's certificate. The whole of it is one copy-pastable string.
type Token struct {
	// Server is the join service's host:port.
	Server string `json:"s"`
	// ID and Secret identify the stored token; only the secret's SHA-256
	// is stored.
	ID     string `json:"i"`
	Secret string `json:"k"`
	// CAHash is "sha256:<hex>" of the mesh CA certificate (DER).
	CAHash string `json:"c"`
	// Cluster is set in cluster tokens only (`meshctl cluster token`):
	// the name of the cluster that made it, which the connecting cluster
	// issues its credential for before it calls.
	Cluster string `json:"n,omitempty"`
}

// IsClusterToken reports whether t connects a cluster rather than joins a
// node.
func (t Token) IsClusterToken() bool { return t.Cluster != "" }

var (
	tokenSecretRE = regexp.MustCompile(`^[A-Za-z0-9_-]{16,128}$`)
	caHashRE      = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)
	hostnameRE    = regexp.MustCompile(`^[A-Za-z0-9]([-.A-Za-z0-9]{0,251}[A-Za-z0-9])?$`)
)

// String encodes the token: TokenPrefix and the URL-safe base64 of its
// JSON, one shell word with no character a shell or YAML treats specially.
func (t Token) String() string {
	data, _ := json.Marshal(t) // a struct of strings always marshals
	return TokenPrefix + base64.RawURLEncoding.EncodeToString(data)
}

// Validate checks every field.
func (t Token) Validate() error {
	if err := checkServer(t.Server); err != nil {
		return fmt.Errorf("%w: join service address: %v", ErrMalformedToken, err)
	}
	if !names.Valid(t.ID) {
		return fmt.Errorf("%w: token id %q is not valid", ErrMalformedToken, t.ID)
	}
	if !tokenSecretRE.MatchString(t.Secret) {
		return fmt.Errorf("%w: the token secret is not valid (16-128 characters of A-Z a-z 0-9 _ -)", ErrMalformedToken)
	}
	if !caHashRE.MatchString(t.CAHash) {
		return fmt.Errorf("%w: CA fingerprint %q is not sha256:<64 lower-case hex digits>", ErrMalformedToken, t.CAHash)
	}
	if t.Cluster != "" && !names.Valid(t.Cluster) {
		return fmt.Errorf("%w: cluster name %q is not valid", ErrMalformedToken, t.Cluster)
	}
	return nil
}

func checkServer(s string) error {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return fmt.Errorf("%q is not host:port", s)
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 1 || n > 65535 || strconv.Itoa(n) != port {
		return fmt.Errorf("%q: port must be 1-65535", s)
	}
	if ip := net.ParseIP(host); ip != nil {
		if ip.IsUnspecified() {
			return fmt.Errorf("%q: a wildcard address cannot be dialled (set the join service's advertised address)", s)
		}
		if strings.Contains(host, "%") {
			return fmt.Errorf("%q: zoned addresses are not supported", s)
		}
		return nil
	}
	if !hostnameRE.MatchString(host) {
		return fmt.Errorf("%q: %q is neither an IP address nor a host name", s, host)
	}
	return nil
}

// ParseToken decodes and validates a join token. Surrounding white space
// (a pasted newline) is ignored; anything else that is not exactly what
// Token.String produces is refused, so a token has one spelling.
func ParseToken(s string) (Token, error) {
	s = strings.TrimSpace(s)
	if len(s) > maxTokenLen {
		return Token{}, fmt.Errorf("%w: %d characters is too long to be a token", ErrMalformedToken, len(s))
	}
	body, ok := strings.CutPrefix(s, TokenPrefix)
	if !ok {
		if strings.HasPrefix(s, "weft") {
			return Token{}, fmt.Errorf("%w: unsupported token version (this meshctl reads %q tokens): update meshctl or make a new token", ErrMalformedToken, TokenPrefix)
		}
		return Token{}, fmt.Errorf("%w: it must start with %q; copy the whole string `meshctl token create` printed", ErrMalformedToken, TokenPrefix)
	}
	raw, err := base64.RawURLEncoding.Strict().DecodeString(body)
	if err != nil {
		return Token{}, fmt.Errorf("%w: not valid base64 (was it cut short when copied?)", ErrMalformedToken)
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	var t Token
	if err := dec.Decode(&t); err != nil {
		return Token{}, fmt.Errorf("%w: its content does not decode: %v", ErrMalformedToken, err)
	}
	if err := t.Validate(); err != nil {
		return Token{}, err
	}
	if t.String() != s {
		return Token{}, fmt.Errorf("%w: not in canonical form; copy the string `meshctl token create` printed unchanged", ErrMalformedToken)
	}
	return t, nil
}
