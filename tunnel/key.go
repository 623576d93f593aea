package tunnel

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// Key file names inside the state directory. The next key exists only
// between PrepareRotation and Rotate.
const (
	keyFile     = "wireguard.key"
	nextKeyFile = "wireguard.key.next"
)

// ErrInvalidKey is wrapped by every error about a malformed key.
var ErrInvalidKey = errors.New("tunnel: invalid WireGuard key")

// loadOrCreateKey reads the private key at path, creating it (mode 0600)
// when it does not exist. A key file readable by others is refused rather
// than silently used: whoever can read it can impersonate the node.
func loadOrCreateKey(path string) (wgtypes.Key, bool, error) {
	k, err := readKey(path)
	if err == nil {
		return k, false, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return wgtypes.Key{}, false, err
	}
	k, err = wgtypes.GeneratePrivateKey()
	if err != nil {
		return wgtypes.Key{}, false, fmt.Errorf("generating private key: %w", err)
	}
	if err := writeKey(path, k); err != nil {
		return wgtypes.Key{}, false, err
	}
	return k, true, nil
}

func readKey(path string) (wgtypes.Key, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return wgtypes.Key{}, err
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return wgtypes.Key{}, fmt.Errorf("private key %s has mode %v: it must be readable by its owner only (chmod 600 %s)", path, fi.Mode().Perm(), path)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return wgtypes.Key{}, fmt.Errorf("reading private key: %w", err)
	}
	k, err := wgtypes.ParseKey(strings.TrimSpace(string(b)))
	if err != nil {
		return wgtypes.Key{}, fmt.Errorf("%w: %s does not hold a base64 WireGuard key (%v); move it away to generate a new one", ErrInvalidKey, path, err)
	}
	return k, nil
}

// writeKey writes atomically: a crash leaves either the old or the new key,
// never a truncated file that would make the node unreachable.
func writeKey(path string, k wgtypes.Key) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("creating state directory: %w", err)
	}
	f, err := os.CreateTemp(filepath.Dir(path), ".key-*")
	if err != nil {
		return fmt.Errorf("writing private key: %w", err)
	}
	defer os.Remove(f.Name())
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return fmt.Errorf("writing private key: %w", err)
	}
	if _, err := f.WriteString(k.String() + "\n"); err != nil {
		f.Close()
		return fmt.Errorf("writing private key: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("writing private key: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("writing private key: %w", err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("writing private key: %w", err)
	}
	return nil
}

// ParsePublicKey parses a base64 WireGuard public key with an error that
// says what was expected.
func ParsePublicKey(s string) (wgtypes.Key, error) {
	k, err := wgtypes.ParseKey(s)
	if err != nil {
		return wgtypes.Key{}, fmt.Errorf("%w: %q is not a base64 32-byte key (as printed by `wg pubkey`)", ErrInvalidKey, s)
	}
	return k, nil
}
