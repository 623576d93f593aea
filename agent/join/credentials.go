package join

import (
	"path/filepath"

	"github.com/weftmesh/weft/pki"
)

// File names of a node's credentials inside its credentials directory.
const (
	CAFile   = "ca.pem"
	CertFile = "node.pem"
	KeyFile  = "node-key.pem"
)

// CredentialFiles are the paths WriteFiles wrote.
type CredentialFiles struct {
	CA, Cert, Key string
}

// WriteFiles saves the credentials into dir (0700; files 0600, each
// replaced atomically) and returns their paths, for the agent's
// etcd.caFile, certFile and keyFile.
func (c *Credentials) WriteFiles(dir string) (CredentialFiles, error) {
	err := pki.WriteFiles(dir, map[string][]byte{CAFile: c.CAPEM, CertFile: c.CertPEM, KeyFile: c.KeyPEM})
	return CredentialFiles{
		CA:   filepath.Join(dir, CAFile),
		Cert: filepath.Join(dir, CertFile),
		Key:  filepath.Join(dir, KeyFile),
	}, err
}
