package pki

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// bundleValidity is the lifetime of the etcd server and admin client
// certificates in a bundle. Nothing renews them yet, so they live as long
// as the CA: a lab or a small mesh must not expire under its users.
const bundleValidity = CAValidity

// Files names the PEM files of the bundle EnsureBundle keeps in a
// directory: the mesh CA, etcd's server certificate and an administrative
// client certificate (etcd user "root").
type Files struct {
	CAFile, CAKeyFile         string
	ServerCertFile, ServerKey string
	ClientCertFile, ClientKey string
}

// BundleFiles returns the file names EnsureBundle uses inside dir.
func BundleFiles(dir string) Files {
	return Files{
		CAFile:         filepath.Join(dir, "ca.crt"),
		CAKeyFile:      filepath.Join(dir, "ca.key"),
		ServerCertFile: filepath.Join(dir, "server.crt"),
		ServerKey:      filepath.Join(dir, "server.key"),
		ClientCertFile: filepath.Join(dir, "client.crt"),
		ClientKey:      filepath.Join(dir, "client.key"),
	}
}

// EnsureBundle makes sure dir (0700, files 0600) holds a CA, a server
// certificate valid for hosts (DNS names or IP literals) and an
// administrative client certificate. Existing files are kept, so a
// restarted server keeps the identity its clients already trust; a
// certificate is issued only when it is missing. Half a CA (a certificate
// without its key) is refused rather than replaced: it is somebody's mesh.
func EnsureBundle(dir string, hosts []string) (Files, error) {
	f := BundleFiles(dir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return f, fmt.Errorf("creating the certificate directory: %w", err)
	}
	ca, err := LoadCAFiles(f.CAFile, f.CAKeyFile)
	if errors.Is(err, os.ErrNotExist) {
		if ca, err = NewCA("weft-etcd-ca"); err != nil {
			return f, err
		}
		keyPEM, err := encodeKey(ca.key)
		if err != nil {
			return f, err
		}
		if err := WriteFiles(dir, map[string][]byte{filepath.Base(f.CAKeyFile): keyPEM, filepath.Base(f.CAFile): ca.CertPEM}); err != nil {
			return f, fmt.Errorf("saving the mesh CA: %w", err)
		}
		// A new CA invalidates any leaf certificates left from an older one.
		_ = os.Remove(f.ServerCertFile)
		_ = os.Remove(f.ClientCertFile)
	} else if err != nil {
		return f, err
	}
	leaves := []struct {
		certFile, keyFile string
		leaf              leaf
	}{
		{f.ServerCertFile, f.ServerKey, leaf{commonName: "weft-etcd", hosts: hosts, server: true, client: true, validity: bundleValidity}},
		{f.ClientCertFile, f.ClientKey, leaf{commonName: "root", client: true, validity: bundleValidity}},
	}
	for _, l := range leaves {
		if exists(l.certFile) && exists(l.keyFile) {
			continue
		}
		cert, key, err := ca.issue(l.leaf)
		if err != nil {
			return f, err
		}
		if err := WriteFiles(dir, map[string][]byte{filepath.Base(l.keyFile): key, filepath.Base(l.certFile): cert}); err != nil {
			return f, err
		}
	}
	return f, nil
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}
