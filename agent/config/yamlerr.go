package config

import (
	"fmt"
	"regexp"
	"strings"

	yamlv3 "go.yaml.in/yaml/v3"
)

var (
	unknownFieldRE = regexp.MustCompile(`^unknown field "([^"]+)"$`)
	wrongTypeRE    = regexp.MustCompile(`^cannot unmarshal (\w+) into Go struct field \w+\.(\S+) of type (\S+)$`)
)

// describeYAMLError turns what sigs.k8s.io/yaml reports (a YAML-to-JSON
// conversion, then encoding/json in Go terms) into the key, its line and
// the problem, in the file's own terms.
func describeYAMLError(data []byte, err error) string {
	msg := err.Error()
	for _, p := range []string{"error unmarshaling JSON: ", "while decoding JSON: ", "json: ", "error converting YAML to JSON: "} {
		msg = strings.TrimPrefix(msg, p)
	}
	if m := unknownFieldRE.FindStringSubmatch(msg); m != nil {
		msg = fmt.Sprintf("unknown field %q (misspelt? the fields are listed in docs/cli.md)", m[1])
		if line := keyLine(data, func(path []string) bool { return path[len(path)-1] == m[1] }); line > 0 {
			msg = fmt.Sprintf("line %d: %s", line, msg)
		}
		return msg
	}
	if m := wrongTypeRE.FindStringSubmatch(msg); m != nil {
		want := strings.Split(m[2], ".")
		msg = fmt.Sprintf("%s: a %s where %s is expected", m[2], m[1], goTypeName(m[3]))
		if line := keyLine(data, func(path []string) bool { return strings.EqualFold(strings.Join(path, "."), strings.Join(want, ".")) }); line > 0 {
			msg = fmt.Sprintf("line %d: %s", line, msg)
		}
	}
	return msg
}

func goTypeName(t string) string {
	switch {
	case strings.HasPrefix(t, "int"), strings.HasPrefix(t, "uint"):
		return "a whole number"
	case t == "bool":
		return "true or false"
	case t == "string":
		return "a string"
	case strings.HasPrefix(t, "[]"):
		return "a list"
	case strings.HasPrefix(t, "map"):
		return "a mapping"
	default:
		return "a " + t
	}
}

// keyLine returns the line of the first mapping key (depth first) whose
// path from the document root satisfies match, or 0.
func keyLine(data []byte, match func(path []string) bool) int {
	var doc yamlv3.Node
	if yamlv3.Unmarshal(data, &doc) != nil {
		return 0
	}
	var walk func(n *yamlv3.Node, path []string) int
	walk = func(n *yamlv3.Node, path []string) int {
		switch n.Kind {
		case yamlv3.DocumentNode, yamlv3.SequenceNode:
			for _, c := range n.Content {
				if l := walk(c, path); l > 0 {
					return l
				}
			}
		case yamlv3.MappingNode:
			for i := 0; i+1 < len(n.Content); i += 2 {
				p := append(append([]string(nil), path...), n.Content[i].Value)
				if match(p) {
					return n.Content[i].Line
				}
				if l := walk(n.Content[i+1], p); l > 0 {
					return l
				}
			}
		}
		return 0
	}
	return walk(&doc, nil)
}
