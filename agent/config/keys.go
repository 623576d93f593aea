package config

import (
	"encoding/json"
	"fmt"
	"reflect"
	"strings"

	"sigs.k8s.io/yaml"
)

// checkKeyCase refuses keys that match a field only when case is ignored.
// sigs.k8s.io/yaml decodes through encoding/json, which matches keys
// case-insensitively, so `ListenPort:` would silently set listenPort; the
// file format is case-sensitive, like every Kubernetes-style YAML.
func checkKeyCase(data []byte) error {
	js, err := yaml.YAMLToJSON(data)
	if err != nil {
		return nil // the decoder reports syntax errors with their line
	}
	var doc any
	if err := json.Unmarshal(js, &doc); err != nil {
		return nil
	}
	return walkKeys(doc, reflect.TypeOf(Config{}), "")
}

func walkKeys(v any, t reflect.Type, path string) error {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.Struct:
		m, ok := v.(map[string]any)
		if !ok {
			return nil // a type mismatch: the decoder names it
		}
		for key, sub := range m {
			f, exact := fieldFor(t, key)
			if f == nil {
				continue // unknown: the strict decoder names it
			}
			name := jsonName(*f)
			if !exact {
				return fmt.Errorf("%w: key %q: keys are case-sensitive; did you mean %q?", ErrInvalid, join(path, key), join(path, name))
			}
			if err := walkKeys(sub, f.Type, join(path, name)); err != nil {
				return err
			}
		}
	case reflect.Slice:
		items, ok := v.([]any)
		if !ok {
			return nil
		}
		for i, it := range items {
			if err := walkKeys(it, t.Elem(), fmt.Sprintf("%s[%d]", path, i)); err != nil {
				return err
			}
		}
	}
	return nil
}

// fieldFor finds the field a key decodes into and whether the key spells
// its name exactly.
func fieldFor(t reflect.Type, key string) (*reflect.StructField, bool) {
	var folded *reflect.StructField
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name := jsonName(f)
		if name == "" || name == "-" {
			continue
		}
		if name == key {
			return &f, true
		}
		if strings.EqualFold(name, key) && folded == nil {
			folded = &f
		}
	}
	return folded, false
}

func jsonName(f reflect.StructField) string {
	name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
	if name == "" && f.IsExported() {
		return f.Name
	}
	return name
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}
