package join

import (
	"net/http"
	"slices"
	"strings"
	"time"
)

// AdminOrganization is the organization of every admin API certificate.
// The admin API accepts a client certificate only with it: node and
// cluster certificates, signed by the same CA, are refused.
const AdminOrganization = "weft:admins"

// AdminCommonName is the subject of the admin credential named name. etcd
// has no user of that name, so the certificate opens nothing but the admin
// API.
func AdminCommonName(name string) string { return "admin:" + name }

// adminPath is where the admin API is mounted (api.AdminPrefix).
const adminPath = "/admin"

// adminBody is the local API's error body (api.errorBody): the admin
// API's clients are api.Clients, which read its codes.
type adminBody struct {
	Error string `json:"error"`
	Code  string `json:"code"`
}

// routeAdmin mounts cfg.Admin under /admin/ behind the admin certificate
// check, and logs every request with its holder (the audit trail of
// mesh-wide changes made from outside the seed).
func (s *Server) routeAdmin(mux *http.ServeMux) {
	if s.cfg.Admin == nil {
		return
	}
	inner := http.StripPrefix(adminPath, s.cfg.Admin)
	mux.HandleFunc(adminPath+"/", func(w http.ResponseWriter, r *http.Request) {
		holder, ok := adminHolder(r)
		if !ok {
			s.cfg.Log.Warn("admin API: refused a request without an admin certificate", "remote", r.RemoteAddr,
				"method", r.Method, "path", r.URL.Path, "subject", subject(r))
			writeJSON(w, http.StatusForbidden, adminBody{
				Error: "the admin API needs an admin credential (a client certificate of the mesh CA with organization " + AdminOrganization + "): make one on the seed with 'meshctl admin credential create NAME --out FILE' and pass it with --admin-credentials FILE",
				Code:  "permission_denied",
			})
			return
		}
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
		inner.ServeHTTP(rec, r)
		level := s.cfg.Log.Info
		if r.Method == http.MethodGet {
			level = s.cfg.Log.Debug
		}
		level("admin API request", "holder", holder, "remote", r.RemoteAddr, "method", r.Method,
			"path", r.URL.Path, "status", rec.status, "duration", time.Since(start))
	})
}

// adminHolder is the name in the request's verified admin certificate.
// The TLS layer verified the chain against the mesh CA (ClientCAs); this
// checks that the certificate was made for the admin API.
func adminHolder(r *http.Request) (string, bool) {
	if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 {
		return "", false
	}
	cert := r.TLS.VerifiedChains[0][0]
	name, ok := strings.CutPrefix(cert.Subject.CommonName, "admin:")
	if !ok || name == "" || !slices.Equal(cert.Subject.Organization, []string{AdminOrganization}) {
		return "", false
	}
	return name, true
}

func subject(r *http.Request) string {
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		return ""
	}
	return r.TLS.PeerCertificates[0].Subject.CommonName
}

type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (s *statusRecorder) WriteHeader(code int) {
	s.status = code
	s.ResponseWriter.WriteHeader(code)
}
