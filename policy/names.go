package policy

import (
	"fmt"
	"strings"

	"github.com/weftmesh/weft/internal/names"
)

// Policies come from two kinds of place. A stored policy (etcd,
// `meshctl policy apply`) has a name that follows the mesh's one name rule
// (ValidateName), which allows no ':' and no '/'. An imported policy —
// translated from an object of another system, such as a Kubernetes
// NetworkPolicy — is named "<origin>:<part>[/<part>...]": the ':' keeps
// every imported name apart from every stored one, and each origin (a
// kind of object) keeps its names apart from the other origins'. The
// compiler holds both kinds side by side, keyed by name.

// MaxImportedNameLen bounds an imported policy's name: room for a
// Kubernetes namespace (63) and object name (253) with an origin.
const MaxImportedNameLen = 340

// ImportedName builds the name of an imported policy from its origin and
// the parts that name the object (for a Kubernetes object: namespace and
// name, or the name alone). It does not validate: Validate and
// ValidateImportedName do.
func ImportedName(origin string, parts ...string) string {
	return origin + ":" + strings.Join(parts, "/")
}

// IsImportedName reports whether name has the form of an imported
// policy's name (it contains ':'); it may still be invalid.
func IsImportedName(name string) bool { return strings.Contains(name, ":") }

// ValidateImportedName checks an imported policy's name: an origin of
// lower-case letters, digits and '-' starting with a letter, ':', then one
// to three '/'-separated parts, each a DNS subdomain of at most 253
// characters (what Kubernetes namespaces and object names are).
func ValidateImportedName(name string) error {
	origin, rest, ok := strings.Cut(name, ":")
	if !ok {
		return fmt.Errorf("%q is not an imported policy name (<origin>:<name>)", name)
	}
	if len(name) > MaxImportedNameLen {
		return fmt.Errorf("imported policy name %q is %d characters long, at most %d are allowed", name, len(name), MaxImportedNameLen)
	}
	if origin == "" || !(origin[0] >= 'a' && origin[0] <= 'z') || strings.Trim(origin, "abcdefghijklmnopqrstuvwxyz0123456789-") != "" {
		return fmt.Errorf("imported policy name %q: origin %q must be lower-case letters, digits and '-', starting with a letter", name, origin)
	}
	parts := strings.Split(rest, "/")
	if len(parts) > 3 {
		return fmt.Errorf("imported policy name %q has %d parts after the origin, at most 3", name, len(parts))
	}
	for _, p := range parts {
		if len(p) > 253 {
			return fmt.Errorf("imported policy name %q: part %q is longer than 253 characters", name, p)
		}
		if why := names.CheckDNSSubdomain(p); why != "" {
			return fmt.Errorf("imported policy name %q: part %q is not a DNS subdomain: %s", name, p, why)
		}
	}
	return nil
}

// validatePolicyName accepts a stored policy's name or an imported one's.
func validatePolicyName(name string) error {
	if IsImportedName(name) {
		return ValidateImportedName(name)
	}
	return ValidateName(name)
}
