package console

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"mime"
	"net"
	"net/http"
	"slices"
	"strings"
)

// csrfHeader carries the page's CSRF token on every action.
const csrfHeader = "X-Orchestrate-CSRF"

// keyParam is the query parameter of the printed URL that opens a session.
const keyParam = "key"

// guard holds the console's own secrets: the session key (printed once in
// the URL, then carried by a cookie) and the CSRF token (in the page).
// Neither is derived from the cluster secret: they are worth nothing to the
// agent, and they die with the process.
type guard struct {
	key, csrf string
	cookie    string // the session cookie's name, per port: cookies ignore ports
	hosts     map[string]bool
	cop       *http.CrossOriginProtection
}

func newGuard(extraHosts []string) *guard {
	g := &guard{key: randomHex(32), csrf: randomHex(32), cookie: "orchestrate_console", hosts: map[string]bool{"localhost": true},
		cop: http.NewCrossOriginProtection()}
	for _, h := range extraHosts {
		g.hosts[strings.ToLower(h)] = true
	}
	return g
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // never fails (crypto/rand panics rather)
	return hex.EncodeToString(b)
}

// setPort names the session cookie after the port, so that two consoles on
// one machine (say, for two clusters) do not overwrite each other's.
func (g *guard) setPort(port string) { g.cookie = "orchestrate_console_" + port }

// allowedHost reports whether a request's Host header names this console
// in a way a DNS-rebinding page cannot: an IP literal, localhost, or a name
// the operator configured.
func (g *guard) allowedHost(hostport string) bool {
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	}
	host = strings.Trim(host, "[]")
	if host == "" {
		return false
	}
	if net.ParseIP(host) != nil {
		return true
	}
	return g.hosts[strings.ToLower(host)]
}

func equal(a, b string) bool { return subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1 }

// wrap puts every request through the checks that do not depend on the
// route: security headers, the Host header, the session. A GET with the
// right ?key= opens a session: the cookie is set and the browser is sent
// to the same page without the key, so it does not stay in the address bar.
func (g *guard) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
		h.Set("X-Frame-Options", "DENY")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Cross-Origin-Opener-Policy", "same-origin")
		h.Set("Cross-Origin-Resource-Policy", "same-origin")
		h.Set("Cache-Control", "no-store")
		if !g.allowedHost(r.Host) {
			http.Error(w, "console: unexpected Host header: open the address printed by `orchestrate ui`", http.StatusForbidden)
			return
		}
		if k := r.URL.Query().Get(keyParam); k != "" && r.Method == http.MethodGet {
			if !equal(k, g.key) {
				refuse(w, r, http.StatusUnauthorized, "this key does not open this console (was it restarted? it prints a new address each time)")
				return
			}
			http.SetCookie(w, &http.Cookie{Name: g.cookie, Value: g.key, Path: "/", HttpOnly: true, SameSite: http.SameSiteStrictMode})
			// Back to the page asked for, if it is one of ours: never to
			// a path like //elsewhere, which a browser reads as another site.
			to := "/"
			if slices.Contains(pages, r.URL.Path) {
				to = r.URL.Path
			}
			http.Redirect(w, r, to, http.StatusSeeOther)
			return
		}
		c, err := r.Cookie(g.cookie)
		if err != nil || !equal(c.Value, g.key) {
			refuse(w, r, http.StatusUnauthorized, "open the address printed by `orchestrate ui`: it carries the key to this console")
			return
		}
		next.ServeHTTP(w, r)
	})
}

// action guards a state-changing route: same origin, a JSON body and the
// page's CSRF token. The route's own pattern makes it POST only.
func (g *guard) action(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := g.cop.Check(r); err != nil {
			refuse(w, r, http.StatusForbidden, "cross-origin request refused")
			return
		}
		if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt != "application/json" {
			refuse(w, r, http.StatusUnsupportedMediaType, "actions take a JSON body")
			return
		}
		if !equal(r.Header.Get(csrfHeader), g.csrf) {
			refuse(w, r, http.StatusForbidden, "missing or wrong CSRF token: reload the page")
			return
		}
		next.ServeHTTP(w, r)
	})
}

// refuse answers JSON to the page's API calls and text elsewhere.
func refuse(w http.ResponseWriter, r *http.Request, status int, msg string) {
	if strings.HasPrefix(r.URL.Path, "/api/") {
		writeJSON(w, status, apiError{Error: msg})
		return
	}
	http.Error(w, "console: "+msg, status)
}
